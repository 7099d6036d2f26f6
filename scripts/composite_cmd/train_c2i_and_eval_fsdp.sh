#!/usr/bin/env bash
# Train a large class-conditional GPT with FSDP2 and evaluate it (official
# scripts/composite_cmd/train_c2i_and_eval_fsdp.sh): the stages of train_c2i_and_eval.sh (train -> gFID with a CFG
# search -> validation loss -> summary), trained by scripts/train_c2i_fsdp.sh with --data-parallel $DATA_PARALLEL.
# Example (Detailed_instructions.md, "Training 1.4B AR model on XL-XXL tokenizers using FSDP/SDP"):
#   . set_env_vars.sh
#   VQ_CKPT=$PROJECT_ROOT/results/ckpts/VQ_XLXXL256_e300.pt TOK_CONFIG=configs/vq/VQ_XLXXL256.yaml \
#   LM_EXP_DIR=GPT_XXL256_VQ_XLXXL_e300 LM_BSZ=512 GPT_MODEL=GPT-XXL WARM_ITER=200 DATASET=imagenet_code \
#   CODEPATH=$PROJECT_ROOT/dataset/imgnet_code/VQ_XLXXL256_e300/ten_crop/ \
#   bash scripts/composite_cmd/train_c2i_and_eval_fsdp.sh
#
# Environment: as train_c2i_and_eval.sh, with these official defaults that differ: EVAL_BATCH_PER_GPU [16];
# DATA_PARALLEL [sdp] (sdp, fsdp or hsdp); GT_NPZ_PATH [$PROJECT_ROOT/VIRTUAL_imagenet256_labeled.npz];
# EVAL_PYTHON_PATH [python: our PyTorch port of the ADM evaluator]. The official file fixed CFG_SCHEDULE to step
# (the default here) and had no GPT_2D / USE_ADALN switches (accepted here).
# Fixed official bugs: `VQ_CKPT=... \` before `fi` (a syntax error: the script ran nothing); TOK_EARLY_STOP_ITER had
# no default ("" selected an early stop at step 0); --eval-wandb-dir and --wandb (no parser accepts them) are
# dropped; the path fixes of train_c2i_and_eval.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/recipe.sh"

# Tokenizer
VQ_CKPT=${VQ_CKPT:-"None"}
VQ_EXP_DIR=${VQ_EXP_DIR:-}
TOK_CONFIG=${TOK_CONFIG:-}
TOK_EPOCH=${TOK_EPOCH:-"50"}
TOK_BSZ=${TOK_BSZ:-"128"}
TOK_EARLY_STOP_ITER=${TOK_EARLY_STOP_ITER:-"None"}

# LM
LM_EXP_DIR=${LM_EXP_DIR:-}
LM_EPOCH=${LM_EPOCH:-300}
LM_BSZ=${LM_BSZ:-256}
GPT_MODEL=${GPT_MODEL:-"GPT-B"}
WARM_ITER=${WARM_ITER:-5000}
LR=${LR:-"1e-4"}
PRECISION=${PRECISION:-"fp16"}
EVAL_BATCH_PER_GPU=${EVAL_BATCH_PER_GPU:-16}
FRACT_DECAY=${FRACT_DECAY:-0.2}
CKPT_EVERY=${CKPT_EVERY:-5000}
DATA_PARALLEL=${DATA_PARALLEL:-sdp}
USE_QK_NORM=${USE_QK_NORM:-"False"}
CFG_SCHEDULE=${CFG_SCHEDULE:-"step"}
CFG_START_RATIO=${CFG_START_RATIO:-0.18}
NUM_FID_SAMPLES=${NUM_FID_SAMPLES:-50000}

# Data
IMGNET_ROOT=${IMGNET_ROOT:-}
DATAPATH=${DATAPATH:-${IMGNET_ROOT}/ILSVRC2012_img_train/}
DATASET=${DATASET:-imagenet}
CODEPATH=${CODEPATH:-None}

# Evaluation
GT_NPZ_PATH=${GT_NPZ_PATH:-${PROJECT_ROOT}/VIRTUAL_imagenet256_labeled.npz}
EVAL_PYTHON_PATH=${EVAL_PYTHON_PATH:-python}

recipe_train_c2i_and_eval train_c2i_fsdp.sh --data-parallel "${DATA_PARALLEL}"
