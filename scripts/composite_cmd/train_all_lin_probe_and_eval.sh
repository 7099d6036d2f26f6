#!/usr/bin/env bash
# Linear probes of a tokenizer and of a GPT trained on it (official
# scripts/composite_cmd/train_all_lin_probe_and_eval.sh): the stages of train_tok_lin_probe_and_eval.sh (skipped with
# LM_ONLY=True) into $PROJECT_ROOT/results/lin_probe/$TOK_LIN_EXP_DIR, then those of train_lm_lin_probe_and_eval.sh
# into $PROJECT_ROOT/results/lin_probe_gpt/$LM_LIN_EXP_DIR, and one summary of both:
# $SUMMARY_DIR/train_all_lin_probe_and_eval/$LM_LIN_EXP_DIR.md and .json.
#
# Environment (official names and defaults): TOK_CONFIG (required); VQ_CKPT [None: $PROJECT_ROOT/results/tokenizers/
# vq/$VQ_EXP_DIR/checkpoints/<TOK_EARLY_STOP_ITER, else TOK_EPOCH [100] epochs at TOK_BSZ [128]>.pt]; FIX_DIM [False];
# FROM_DECODER [False]; GPT_CKPT [None: step LM_STOP_ITER (default the last) of the WSD run
# $PROJECT_ROOT/results/gpt/$LM_EXP_DIR, LM_EPOCH [300] epochs at LM_BSZ [256], LM_FRACT_DECAY [0.2]]; GPT_MODEL
# [GPT-B]; PRECISION [none]; LM_PRECISION, TOK_PRECISION [PRECISION]; LM_ONLY [False]; USE_QK_NORM [False];
# LM_LIN_EXP_DIR, TOK_LIN_EXP_DIR; LIN_BSZ [128 per GPU]; CKPT_EPOCH [5]; NUM_CODE [256]; IMGNET_ROOT. Ours:
# LIN_EPOCHS [90]; LIN_BLR [0.1]; IMAGE_SIZE [256]; SUMMARY_DIR; the launchers' environment (GIGATOK_<STAGE>_ARGS, ...).
# Fixed official bugs: `VQ_CKPT=... \` before `fi` (a syntax error: the script ran nothing); GPT_CKPT had no "None"
# default; the evaluated checkpoints 0089.pt were fixed whatever the epochs.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/recipe.sh"

# Tokenizer
VQ_CKPT=${VQ_CKPT:-"None"}
VQ_EXP_DIR=${VQ_EXP_DIR:-}
TOK_CONFIG=${TOK_CONFIG:-}
TOK_EPOCH=${TOK_EPOCH:-"100"}
TOK_BSZ=${TOK_BSZ:-"128"}
FIX_DIM=${FIX_DIM:-"False"}
FROM_DECODER=${FROM_DECODER:-"False"}
TOK_EARLY_STOP_ITER=${TOK_EARLY_STOP_ITER:-"None"}
NUM_CODE=${NUM_CODE:-256}

# LM
GPT_CKPT=${GPT_CKPT:-"None"}
LM_EXP_DIR=${LM_EXP_DIR:-}
LM_EPOCH=${LM_EPOCH:-300}
LM_BSZ=${LM_BSZ:-256}
GPT_MODEL=${GPT_MODEL:-"GPT-B"}
PRECISION=${PRECISION:-"none"}
LM_FRACT_DECAY=${LM_FRACT_DECAY:-0.2}
LM_PRECISION=${LM_PRECISION:-${PRECISION}}
TOK_PRECISION=${TOK_PRECISION:-${PRECISION}}
LM_ONLY=${LM_ONLY:-"False"}
USE_QK_NORM=${USE_QK_NORM:-"False"}

# Linear probe
LM_LIN_EXP_DIR=${LM_LIN_EXP_DIR:-}
TOK_LIN_EXP_DIR=${TOK_LIN_EXP_DIR:-}
LIN_BSZ=${LIN_BSZ:-128}  # per GPU: 128 x 64 GPUs officially
CKPT_EPOCH=${CKPT_EPOCH:-5}
LIN_EPOCHS=${LIN_EPOCHS:-90}
IMGNET_ROOT=${IMGNET_ROOT:-}

require TOK_CONFIG "the tokenizer YAML, e.g. configs/vq/VQ_BL256.yaml"
require LM_LIN_EXP_DIR "the GPT probe run, a folder under results/lin_probe_gpt/"
require IMGNET_ROOT "the ImageNet root with ILSVRC2012_img_train/ and ILSVRC2012_img_val/"
vq_ckpt_default
gpt_ckpt_default
SUMMARY_FLAGS=()
if [[ "${LM_ONLY}" == "False" ]]; then
    require TOK_LIN_EXP_DIR "the tokenizer probe run, a folder under results/lin_probe/"
    TOK_FLAGS=()
    if [[ "${FIX_DIM}" == "True" ]]; then TOK_FLAGS+=(--fix-dim); fi
    if [[ "${FROM_DECODER}" == "True" ]]; then TOK_FLAGS+=(--from-decoder); fi
    lin_probe train_lin_probe.sh "${PROJECT_ROOT}/results/lin_probe/" "${TOK_LIN_EXP_DIR}" "${TOK_PRECISION}" \
        "${TOK_FLAGS[@]}"
    SUMMARY_FLAGS+=(--tok-lin-probe "${PROJECT_ROOT}/results/lin_probe/${TOK_LIN_EXP_DIR}/lin_probe_acc.json")
fi
gpt_flags
lin_probe train_lin_probe_gpt.sh "${PROJECT_ROOT}/results/lin_probe_gpt/" "${LM_LIN_EXP_DIR}" "${LM_PRECISION}" \
    --gpt-model "${GPT_MODEL}" --gpt-ckpt "${GPT_CKPT}" "${GPT_FLAGS[@]}"
settings TOK_CONFIG GPT_MODEL TOK_PRECISION LM_PRECISION FIX_DIM FROM_DECODER LM_ONLY LIN_EPOCHS LIN_BSZ NUM_CODE \
    IMAGE_SIZE
summary "${LM_LIN_EXP_DIR}" --tok-ckpt "${VQ_CKPT}" --gpt-ckpt "${GPT_CKPT}" "${SUMMARY_FLAGS[@]}" \
    --gpt-lin-probe "${PROJECT_ROOT}/results/lin_probe_gpt/${LM_LIN_EXP_DIR}/lin_probe_acc.json" "${SETTINGS[@]}"
