#!/usr/bin/env bash
# Train a large tokenizer with FSDP2 and evaluate it (official scripts/composite_cmd/train_vq_and_eval_fsdp.sh): the
# stages of train_vq_and_eval.sh (train -> reconstruction metrics -> AR probing -> summary), trained by
# scripts/train_vq_fsdp.sh with --grad-precision $PRECISION and --fract-decay $FRACT_DECAY.
# Example (Detailed_instructions.md, "Training large tokenizers with FSDP"):
#   . set_env_vars.sh
#   VQ_EXP_DIR=VQ_XLXXL256_e300 TOK_CONFIG=configs/vq/VQ_XLXXL256.yaml TOK_EPOCH=300 TOK_BSZ=256 \
#   LM_EXP_DIR=GPT_B256_VQ_XLXXL_e300 PRECISION=bf16 VAL_PATH=results/reconstructions/img_data \
#   GT_VAL_NPZ_PATH=$PROJECT_ROOT/results/reconstructions/val_imagenet.npz \
#   GT_NPZ_PATH=$PROJECT_ROOT/VIRTUAL_imagenet256_labeled.npz bash scripts/composite_cmd/train_vq_and_eval_fsdp.sh
#
# Environment: as train_vq_and_eval.sh, with the official defaults TOK_EPOCH [50] and FRACT_DECAY [0.2] (the
# tokenizer's learning-rate decay); TOK_EARLY_STOP_ITER [None] is ours here (the official file had none).
# Fixed official bugs: the AR probe called scripts/train_c2i_and_eval.sh, which does not exist (it is
# scripts/composite_cmd/train_c2i_and_eval.sh); the reconstructions were scored against GT_NPZ_PATH (the gFID
# reference batch) instead of GT_VAL_NPZ_PATH, and of $PROJECT_ROOT/results/reconstructions/img_data whatever
# VAL_PATH said; --wandb, --wandb-project and --eval-wandb-dir (no parser accepts them) are dropped; the fixes of
# train_vq_and_eval.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/recipe.sh"

# Tokenizer
VQ_EXP_DIR=${VQ_EXP_DIR:-}
TOK_CONFIG=${TOK_CONFIG:-}
TOK_EPOCH=${TOK_EPOCH:-"50"}
TOK_BSZ=${TOK_BSZ:-"128"}
CKPT_EVERY=${CKPT_EVERY:-5000}
FRACT_DECAY=${FRACT_DECAY:-0.2}
TOK_EARLY_STOP_ITER=${TOK_EARLY_STOP_ITER:-"None"}
JSON_PATH=${JSON_PATH:-"None"}  # (deprecated)
DATASET=${DATASET:-"imagenet"}
PRECISION=${PRECISION:-"fp16"}
IMGNET_ROOT=${IMGNET_ROOT:-}

# Reconstruction evaluation
VAL_PATH=${VAL_PATH:-${PROJECT_ROOT}/results/reconstructions/img_data}
GT_VAL_NPZ_PATH=${GT_VAL_NPZ_PATH:-${PROJECT_ROOT}/results/reconstructions/val_imagenet.npz}
EVAL_PYTHON_PATH=${EVAL_PYTHON_PATH:-}

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

recipe_train_vq_and_eval train_vq_fsdp.sh --grad-precision "${PRECISION}" --fract-decay "${FRACT_DECAY}"
