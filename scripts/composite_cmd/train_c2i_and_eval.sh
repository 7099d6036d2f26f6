#!/usr/bin/env bash
# Train a class-conditional GPT and evaluate it (official scripts/composite_cmd/train_c2i_and_eval.sh):
#   1. train      scripts/train_c2i.sh: WSD schedule over LM_EPOCH epochs (LM_ITER steps), stopped at LM_STOP_ITER
#                 -> $PROJECT_ROOT/results/gpt/$LM_EXP_DIR/ (checkpoints/, or cd_records/... for a stop in the decay)
#   2. gFID       scripts/sample_c2i_search_cfg.sh --search: the CFG scale with the lowest FID
#                 -> $PROJECT_ROOT/results/gpt/quan_eval/$LM_EXP_DIR/<step>/ and search_results/<step>.csv
#   3. val loss   scripts/val_loss_c2i.sh on $IMGNET_ROOT/ILSVRC2012_img_val/ -> .../quan_eval/$LM_EXP_DIR/<step>_val_loss.json
#   4. summary    $SUMMARY_DIR/train_c2i_and_eval/$LM_EXP_DIR.md and .json (gFID, IS, precision, recall, scale, val loss)
# Example (Detailed_instructions.md, "Training an AR model using WSD Learning rate"):
#   . set_env_vars.sh
#   VQ_CKPT=$PROJECT_ROOT/results/ckpts/VQ_XLXXL256_e300.pt TOK_CONFIG=configs/vq/VQ_XLXXL256.yaml \
#   LM_EXP_DIR=GPT_B256_VQ_XLXXL_e300 GT_NPZ_PATH=$PROJECT_ROOT/VIRTUAL_imagenet256_labeled.npz \
#   bash scripts/composite_cmd/train_c2i_and_eval.sh
#
# Environment (official names and defaults; an "epoch" is 5000 steps at batch 256):
#   tokenizer  TOK_CONFIG (required); VQ_CKPT [None: $PROJECT_ROOT/results/tokenizers/vq/$VQ_EXP_DIR/checkpoints/
#              <TOK_EARLY_STOP_ITER, else TOK_EPOCH [50] epochs at TOK_BSZ [128]>.pt]
#   GPT        LM_EXP_DIR (required); GPT_MODEL [GPT-B]; LM_EPOCH [300]; LM_BSZ [256]; LM_STOP_ITER [LM_ITER];
#              FRACT_DECAY [0.2]; WARM_ITER [5000]; LR [1e-4]; PRECISION [fp16]; CKPT_EVERY [5000];
#              GPT_2D [False]; USE_QK_NORM [False]; USE_ADALN [False]
#   data       PROJECT_ROOT [current folder]; IMGNET_ROOT; DATASET [imagenet: images tokenized on the fly;
#              imagenet_code: pre-extracted codes in CODEPATH]; DATAPATH [$IMGNET_ROOT/ILSVRC2012_img_train/];
#              CODEPATH [None]
#   gFID       CFG_SCHEDULE [step]; CFG_START_RATIO [0.18]; EVAL_BATCH_PER_GPU [32]; GT_NPZ_PATH (reference batch);
#              EVAL_PYTHON_PATH
#   ours       NUM_FID_SAMPLES [50000]; IMAGE_SIZE [256]; SUMMARY_DIR [$PROJECT_ROOT/results/summaries]; the launchers'
#              GPUS/gpus, NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH, GIGATOK_<STAGE>_ARGS
# Fixed official bugs: `VAL_PATH=${VAL_PATH:}` (a bad substitution that stopped the script; VAL_PATH was unused);
# `VQ_CKPT=... \` before `else` (the backslash made `else` a command, so VQ_CKPT stayed "None"); the checkpoints
# were looked up relative to the current folder while training wrote under $PROJECT_ROOT; a stop inside the decay
# phase was looked up in checkpoints/; GT_NPZ_PATH and EVAL_PYTHON_PATH (exported by the instructions) were not
# passed to the gFID stage; a failed stage no longer lets the next one run on missing files.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/recipe.sh"

# Tokenizer
VQ_CKPT=${VQ_CKPT:-"None"}
VQ_EXP_DIR=${VQ_EXP_DIR:-}
TOK_CONFIG=${TOK_CONFIG:-}
TOK_EPOCH=${TOK_EPOCH:-"50"}
TOK_BSZ=${TOK_BSZ:-"128"}
TOK_EARLY_STOP_ITER=${TOK_EARLY_STOP_ITER:-"None"}

# LM
GPT_2D=${GPT_2D:-"False"}
LM_EXP_DIR=${LM_EXP_DIR:-}
LM_EPOCH=${LM_EPOCH:-300}
LM_BSZ=${LM_BSZ:-256}
FRACT_DECAY=${FRACT_DECAY:-0.2}
GPT_MODEL=${GPT_MODEL:-"GPT-B"}
WARM_ITER=${WARM_ITER:-5000}
LR=${LR:-"1e-4"}
PRECISION=${PRECISION:-"fp16"}
CFG_SCHEDULE=${CFG_SCHEDULE:-"step"}
CFG_START_RATIO=${CFG_START_RATIO:-0.18}
EVAL_BATCH_PER_GPU=${EVAL_BATCH_PER_GPU:-32}
CKPT_EVERY=${CKPT_EVERY:-5000}
USE_QK_NORM=${USE_QK_NORM:-"False"}
USE_ADALN=${USE_ADALN:-"False"}
NUM_FID_SAMPLES=${NUM_FID_SAMPLES:-50000}

# Data
IMGNET_ROOT=${IMGNET_ROOT:-}
DATAPATH=${DATAPATH:-${IMGNET_ROOT}/ILSVRC2012_img_train/}
DATASET=${DATASET:-imagenet}
CODEPATH=${CODEPATH:-None}  # pre-extracted codes (DATASET=imagenet_code), e.g. .../ten_crop/

recipe_train_c2i_and_eval train_c2i.sh
