#!/usr/bin/env bash
# Evaluate a class-conditional GPT (official scripts/composite_cmd/eval_c2i.sh):
#   1. gFID       scripts/sample_c2i_search_cfg.sh at one CFG setting (CFG_SCALE, CFG_SCHEDULE; no search)
#                 -> $PROJECT_ROOT/results/gpt/v4/quan_eval/$LM_EXP_DIR/<step>/   (skipped with VAL_ONLY=True); <step>:
#                 the padded step evaluated, or the name of a given GPT_CKPT
#   2. val loss   scripts/val_loss_c2i.sh on $IMGNET_ROOT/ILSVRC2012_img_val/ -> .../<step>_val_loss.json
#   3. summary    $SUMMARY_DIR/eval_c2i/<LM_EXP_DIR or the GPT_CKPT name>_<step>.md and .json
# Without GPT_CKPT the checkpoint is the one train_c2i_and_eval.sh leaves: step LM_STOP_ITER [the last] of the WSD run
# $PROJECT_ROOT/results/gpt/$LM_EXP_DIR (LM_EPOCH epochs at LM_BSZ).
# Example:
#   . set_env_vars.sh
#   VQ_CKPT=results/ckpts/VQ_XLXXL256_e300.pt TOK_CONFIG=configs/vq/VQ_XLXXL256.yaml GPT_CKPT=results/ckpts/GPT_B.pt \
#   LM_EXP_DIR=GPT_B256_e300_VQ_XLXXL CFG_SCALE=1.75 GT_NPZ_PATH=$PROJECT_ROOT/VIRTUAL_imagenet256_labeled.npz \
#   bash scripts/composite_cmd/eval_c2i.sh
#
# Environment (official names and defaults):
#   tokenizer  TOK_CONFIG (required); VQ_CKPT [None: $PROJECT_ROOT/results/tokenizers/vq/$VQ_EXP_DIR/checkpoints/
#              <TOK_EARLY_STOP_ITER, else TOK_EPOCH [100] epochs at TOK_BSZ [128]>.pt]; CKPT_EVERY [5000] (unused)
#   GPT        GPT_CKPT [None: see above]; LM_EXP_DIR; GPT_MODEL [GPT-B]; LM_EPOCH [300]; LM_BSZ [256];
#              LM_STOP_ITER; FRACT_DECAY [0.2]; WARM_ITER, LR (unused); PRECISION [fp16]; USE_QK_NORM [False]
#   sampling   CFG_SCHEDULE [step]; CFG_SCALE [1.0]; CFG_START_RATIO [0.18]; TOP_K [0]; EVAL_BATCH_PER_GPU [16];
#              VAL_ONLY [False]; GT_NPZ_PATH; EVAL_PYTHON_PATH
#   data       PROJECT_ROOT [current folder]; IMGNET_ROOT; VAL_PATH (unused, as officially: the validation loss
#              reads $IMGNET_ROOT/ILSVRC2012_img_val/)
#   ours       NUM_FID_SAMPLES [50000]; IMAGE_SIZE [256]; SUMMARY_DIR [$PROJECT_ROOT/results/summaries]; the launchers'
#              GPUS/gpus, NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH, GIGATOK_<STAGE>_ARGS
# Fixed official bugs: `VQ_CKPT=... \` before `fi` (a syntax error: the script ran nothing); --eval-wandb-dir and
# --wandb (no parser accepts them) are dropped; the checkpoints were looked up relative to the current folder, and a
# stop inside the decay phase in checkpoints/; GT_NPZ_PATH and EVAL_PYTHON_PATH were not passed.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/recipe.sh"

# Tokenizer
VQ_CKPT=${VQ_CKPT:-"None"}
GPT_CKPT=${GPT_CKPT:-"None"}
VQ_EXP_DIR=${VQ_EXP_DIR:-}
TOK_CONFIG=${TOK_CONFIG:-}
TOK_EPOCH=${TOK_EPOCH:-"100"}
TOK_BSZ=${TOK_BSZ:-"128"}
TOK_EARLY_STOP_ITER=${TOK_EARLY_STOP_ITER:-"None"}

# LM
LM_EXP_DIR=${LM_EXP_DIR:-}
LM_EPOCH=${LM_EPOCH:-300}
LM_BSZ=${LM_BSZ:-256}
FRACT_DECAY=${FRACT_DECAY:-0.2}
GPT_MODEL=${GPT_MODEL:-"GPT-B"}
PRECISION=${PRECISION:-"fp16"}
CFG_SCHEDULE=${CFG_SCHEDULE:-"step"}
CFG_SCALE=${CFG_SCALE:-1.0}
CFG_START_RATIO=${CFG_START_RATIO:-0.18}
TOP_K=${TOP_K:-0}
EVAL_BATCH_PER_GPU=${EVAL_BATCH_PER_GPU:-16}
VAL_ONLY=${VAL_ONLY:-"False"}
USE_QK_NORM=${USE_QK_NORM:-"False"}
NUM_FID_SAMPLES=${NUM_FID_SAMPLES:-50000}
IMGNET_ROOT=${IMGNET_ROOT:-}

require TOK_CONFIG "the tokenizer YAML, e.g. configs/vq/VQ_XLXXL256.yaml"
vq_ckpt_default
if is_none "${GPT_CKPT}"; then
    gpt_ckpt_default  # the step evaluated names the folders, as officially
else
    LM_EVAL_ITER=$(basename "${GPT_CKPT}" .pt)  # a given checkpoint: its name (official: nothing)
fi
EXP_NAME=${LM_EXP_DIR:-$(basename "${GPT_CKPT}" .pt)}
EVAL_DIR="${PROJECT_ROOT}/results/gpt/v4/quan_eval/${EXP_NAME%/}"
SUMMARY_FLAGS=()
if [[ "${VAL_ONLY}" == "False" ]]; then
    # One CFG setting, no search.
    gfid "${EVAL_DIR}/${LM_EVAL_ITER}" --cfg-schedule "${CFG_SCHEDULE}" --cfg-scale "${CFG_SCALE}" --top-k "${TOP_K}" \
        --step-start-ratio "${CFG_START_RATIO}"
    SUMMARY_FLAGS+=(--gfid "${EVAL_DIR}/${LM_EVAL_ITER}")
fi
val_loss "${EVAL_DIR}/${LM_EVAL_ITER}_val_loss.json"
settings TOK_CONFIG GPT_MODEL PRECISION CFG_SCHEDULE CFG_SCALE CFG_START_RATIO TOP_K NUM_FID_SAMPLES GT_NPZ_PATH VAL_ONLY \
    IMAGE_SIZE
summary "${EXP_NAME}_${LM_EVAL_ITER}" --tok-ckpt "${VQ_CKPT}" --gpt-ckpt "${GPT_CKPT}" \
    --val-loss "${EVAL_DIR}/${LM_EVAL_ITER}_val_loss.json" "${SUMMARY_FLAGS[@]}" "${SETTINGS[@]}"
