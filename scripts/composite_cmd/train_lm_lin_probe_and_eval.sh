#!/usr/bin/env bash
# Linear probe of a GPT (official scripts/composite_cmd/train_lm_lin_probe_and_eval.sh; GigaTok paper Sec. 3):
#   1. train      scripts/train_lin_probe_gpt.sh: a linear classifier on the frozen GPT's middle-layer features of
#                 ImageNet train images, LIN_EPOCHS [90] epochs -> $SAVE_DIR/$LM_LIN_EXP_DIR/checkpoints/
#   2. eval       the same with --eval on its last checkpoint (official 0089.pt) -> .../lin_probe_acc.json
#   3. summary    $SUMMARY_DIR/train_lm_lin_probe_and_eval/$LM_LIN_EXP_DIR.md and .json (top-1 / top-5)
# Example (Detailed_instructions.md, "Linear Probing Evaluation: For Autoregressive Models"):
#   . set_env_vars.sh
#   TOK_CONFIG=configs/vq/VQ_XLXXL256.yaml VQ_CKPT=$PROJECT_ROOT/results/ckpts/VQ_XLXXL256_e300.pt \
#   GPT_CKPT=$PROJECT_ROOT/results/ckpts/GPT_B256_e300_VQ_XLXXL.pt GPT_MODEL=GPT-B LM_PRECISION=fp16 \
#   SAVE_DIR=$PROJECT_ROOT/results/lin_probe_gpt/ LM_LIN_EXP_DIR=lin_GPT_B256_e300_VQ_XLXXL LIN_BSZ=128 \
#   bash scripts/composite_cmd/train_lm_lin_probe_and_eval.sh
#
# Environment (official names and defaults):
#   tokenizer  TOK_CONFIG (required); VQ_CKPT [None: $PROJECT_ROOT/results/tokenizers/vq/$VQ_EXP_DIR/checkpoints/
#              <TOK_EARLY_STOP_ITER, else TOK_EPOCH [100] epochs at TOK_BSZ [128]>.pt]
#   GPT        GPT_CKPT [None: step LM_STOP_ITER (default the last) of the WSD run $PROJECT_ROOT/results/gpt/$LM_EXP_DIR,
#              LM_EPOCH [300] epochs at LM_BSZ [256], LM_FRACT_DECAY [0.2]]; GPT_MODEL [GPT-B]; PRECISION [none];
#              LM_PRECISION [PRECISION]; USE_QK_NORM [False]
#   probe      LM_LIN_EXP_DIR (required); SAVE_DIR [$PROJECT_ROOT/results/lin_probe_gpt/]; LIN_BSZ [128 per GPU];
#              NUM_CODE [256]; CKPT_EPOCH [5]; IMGNET_ROOT (with ILSVRC2012_img_train/ and ILSVRC2012_img_val/)
#   ours       LIN_EPOCHS [90]; LIN_BLR [0.1]; IMAGE_SIZE [256]; SUMMARY_DIR [$PROJECT_ROOT/results/summaries]; the
#              launchers' GPUS/gpus, NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH, GIGATOK_<STAGE>_ARGS
# Fixed official bugs: GPT_CKPT had no "None" default, so without it the probe ran with an empty --gpt-ckpt; SAVE_DIR
# (set by the instructions) was ignored; the evaluated checkpoint 0089.pt was fixed whatever the epochs.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/recipe.sh"

# Tokenizer
VQ_CKPT=${VQ_CKPT:-"None"}
VQ_EXP_DIR=${VQ_EXP_DIR:-}
TOK_CONFIG=${TOK_CONFIG:-}
TOK_EPOCH=${TOK_EPOCH:-"100"}
TOK_BSZ=${TOK_BSZ:-"128"}
TOK_EARLY_STOP_ITER=${TOK_EARLY_STOP_ITER:-"None"}

# LM
GPT_CKPT=${GPT_CKPT:-"None"}
LM_EXP_DIR=${LM_EXP_DIR:-}
LM_EPOCH=${LM_EPOCH:-300}
LM_BSZ=${LM_BSZ:-256}
GPT_MODEL=${GPT_MODEL:-"GPT-B"}
PRECISION=${PRECISION:-"none"}
LM_PRECISION=${LM_PRECISION:-${PRECISION}}
LM_FRACT_DECAY=${LM_FRACT_DECAY:-0.2}
USE_QK_NORM=${USE_QK_NORM:-"False"}

# Linear probe
LM_LIN_EXP_DIR=${LM_LIN_EXP_DIR:-}
NUM_CODE=${NUM_CODE:-256}
CKPT_EPOCH=${CKPT_EPOCH:-5}
LIN_BSZ=${LIN_BSZ:-128}  # per GPU: 128 x 64 GPUs officially
SAVE_DIR=${SAVE_DIR:-${PROJECT_ROOT}/results/lin_probe_gpt/}
LIN_EPOCHS=${LIN_EPOCHS:-90}
IMGNET_ROOT=${IMGNET_ROOT:-}

require TOK_CONFIG "the tokenizer YAML, e.g. configs/vq/VQ_XLXXL256.yaml"
require LM_LIN_EXP_DIR "the probe run, a folder under SAVE_DIR"
require IMGNET_ROOT "the ImageNet root with ILSVRC2012_img_train/ and ILSVRC2012_img_val/"
vq_ckpt_default
gpt_ckpt_default
gpt_flags
lin_probe train_lin_probe_gpt.sh "${SAVE_DIR}" "${LM_LIN_EXP_DIR}" "${LM_PRECISION}" \
    --gpt-model "${GPT_MODEL}" --gpt-ckpt "${GPT_CKPT}" "${GPT_FLAGS[@]}"
settings TOK_CONFIG GPT_MODEL LM_PRECISION LIN_EPOCHS LIN_BSZ NUM_CODE IMAGE_SIZE
summary "${LM_LIN_EXP_DIR}" --tok-ckpt "${VQ_CKPT}" --gpt-ckpt "${GPT_CKPT}" \
    --gpt-lin-probe "${SAVE_DIR}/${LM_LIN_EXP_DIR}/lin_probe_acc.json" "${SETTINGS[@]}"
