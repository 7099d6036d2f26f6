#!/usr/bin/env bash
# Train a tokenizer and evaluate it (official scripts/composite_cmd/train_vq_and_eval.sh, the paper's AR probing):
#   1. train        scripts/train_vq.sh for TOK_EPOCH epochs (or up to TOK_EARLY_STOP_ITER)
#                   -> $PROJECT_ROOT/results/tokenizers/vq/$VQ_EXP_DIR/checkpoints/<step>.pt
#   2. recon        scripts/reconstruction.sh on VAL_PATH: rFID (against GT_VAL_NPZ_PATH), PSNR, SSIM, LPIPS, usage
#                   -> $PROJECT_ROOT/results/reconstructions/vq/$VQ_EXP_DIR/<step>/<run>_results.json
#   3. AR probing   scripts/composite_cmd/train_c2i_and_eval.sh: GPT_MODEL [GPT-B] on a WSD schedule of LM_EPOCH
#                   [300] epochs at LM_BSZ [256], stopped at LM_STOP_ITER [250000] (constant learning rate), no
#                   warm-up, lr 1e-4, constant CFG: gFID (CFG search) and validation loss
#   4. summary      $SUMMARY_DIR/train_vq_and_eval/$VQ_EXP_DIR.md and .json (with the AR-probing page's numbers)
# Example (Detailed_instructions.md, "Training smaller tokenizers with DDP"):
#   . set_env_vars.sh
#   VQ_EXP_DIR=VQ_BL256_e200 TOK_CONFIG=configs/vq/VQ_BL256.yaml TOK_EPOCH=200 TOK_BSZ=256 \
#   LM_EXP_DIR=GPT_B256_VQ_BL_e200 PRECISION=fp16 VAL_PATH=results/reconstructions/img_data \
#   GT_VAL_NPZ_PATH=results/reconstructions/val_imagenet.npz GT_NPZ_PATH=$PROJECT_ROOT/VIRTUAL_imagenet256_labeled.npz \
#   bash scripts/composite_cmd/train_vq_and_eval.sh
# (VAL_PATH and GT_VAL_NPZ_PATH come from scripts/val.sh; see Detailed_instructions.md.)
#
# Environment (official names and defaults; an "epoch" is 5000 steps at batch 256):
#   tokenizer    VQ_EXP_DIR, TOK_CONFIG, IMGNET_ROOT (required); TOK_EPOCH [100]; TOK_BSZ [128]; CKPT_EVERY [5000];
#                TOK_EARLY_STOP_ITER [None]; PRECISION [fp16]; DATASET [imagenet]; JSON_PATH [None, deprecated]
#   recon        VAL_PATH [$PROJECT_ROOT/results/reconstructions/img_data];
#                GT_VAL_NPZ_PATH [$PROJECT_ROOT/results/reconstructions/val_imagenet.npz]; EVAL_PYTHON_PATH
#   AR probing   LM_EXP_DIR (required); LM_PRECISION [fp16]; GT_NPZ_PATH (gFID reference batch), and the values the
#                official script hard-coded in its call of train_c2i_and_eval.sh, now overridable: LM_EPOCH [300],
#                LM_BSZ [256], GPT_MODEL [GPT-B], WARM_ITER [0], LR [1e-4], CFG_SCHEDULE [constant],
#                LM_STOP_ITER [250000]; the rest of train_c2i_and_eval.sh's environment (CKPT_EVERY, NUM_FID_SAMPLES,
#                EVAL_BATCH_PER_GPU, ...) passes through
#   ours         IMAGE_SIZE [256]; SUMMARY_DIR [$PROJECT_ROOT/results/summaries]; the launchers' GPUS/gpus, NNODES,
#                NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH, GIGATOK_<STAGE>_ARGS
# Fixed official bugs: an empty EVAL_PYTHON_PATH made --eval-python-path swallow the next flag; the AR probe took
# VQ_CKPT from the environment (the README's reconstruction example exports one) instead of the new tokenizer; a
# failed stage no longer lets the next one run on missing files.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/recipe.sh"

# Tokenizer
VQ_EXP_DIR=${VQ_EXP_DIR:-}
TOK_CONFIG=${TOK_CONFIG:-}
TOK_EPOCH=${TOK_EPOCH:-"100"}
TOK_BSZ=${TOK_BSZ:-"128"}
CKPT_EVERY=${CKPT_EVERY:-5000}
TOK_EARLY_STOP_ITER=${TOK_EARLY_STOP_ITER:-"None"}
JSON_PATH=${JSON_PATH:-"None"}  # (deprecated)
DATASET=${DATASET:-"imagenet"}
PRECISION=${PRECISION:-"fp16"}
IMGNET_ROOT=${IMGNET_ROOT:-}

# Reconstruction evaluation
VAL_PATH=${VAL_PATH:-${PROJECT_ROOT}/results/reconstructions/img_data}
GT_VAL_NPZ_PATH=${GT_VAL_NPZ_PATH:-${PROJECT_ROOT}/results/reconstructions/val_imagenet.npz}
EVAL_PYTHON_PATH=${EVAL_PYTHON_PATH:-}  # should be the ADM evaluation environment's python

# AR probing (official values of the nested call)
LM_EXP_DIR=${LM_EXP_DIR:-}
LM_PRECISION=${LM_PRECISION:-"fp16"}
LM_EPOCH=${LM_EPOCH:-300}
LM_BSZ=${LM_BSZ:-256}
GPT_MODEL=${GPT_MODEL:-"GPT-B"}
WARM_ITER=${WARM_ITER:-0}
LR=${LR:-"1e-4"}
CFG_SCHEDULE=${CFG_SCHEDULE:-"constant"}
LM_STOP_ITER=${LM_STOP_ITER:-250000}

recipe_train_vq_and_eval train_vq.sh
