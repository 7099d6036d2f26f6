#!/usr/bin/env bash
# Linear probe of a tokenizer (official scripts/composite_cmd/train_tok_lin_probe_and_eval.sh). GigaTok's README: this
# accuracy "does not necessarily reflect downstream AR performance" (use train_lm_lin_probe_and_eval.sh for that).
#   1. train      scripts/train_lin_probe.sh: a linear classifier on the frozen tokenizer's features (encoder; with
#                 FIX_DIM=True after conv_out; with FROM_DECODER=True from the decoder), LIN_EPOCHS [90] epochs
#                 -> $SAVE_DIR/$TOK_LIN_EXP_DIR/checkpoints/
#   2. eval       the same with --eval on its last checkpoint (official 0089.pt) -> .../lin_probe_acc.json
#   3. summary    $SUMMARY_DIR/train_tok_lin_probe_and_eval/$TOK_LIN_EXP_DIR.md and .json
# Example (Detailed_instructions.md, "Linear Probing Evaluation: For Tokenizers"):
#   . set_env_vars.sh
#   TOK_CONFIG=configs/vq/VQ_BL256.yaml VQ_CKPT=$PROJECT_ROOT/results/ckpts/VQ_BL256_e200.pt TOK_PRECISION=none \
#   SAVE_DIR=$PROJECT_ROOT/results/lin_probe/ TOK_LIN_EXP_DIR=lin_VQ_BL256_e200 LIN_BSZ=128 \
#   bash scripts/composite_cmd/train_tok_lin_probe_and_eval.sh
#
# Environment (official names and defaults):
#   tokenizer  TOK_CONFIG (required); VQ_CKPT [None: $PROJECT_ROOT/results/tokenizers/vq/$VQ_EXP_DIR/checkpoints/
#              <TOK_EARLY_STOP_ITER, else TOK_EPOCH [50] epochs at TOK_BSZ [128]>.pt]; FIX_DIM [False];
#              FROM_DECODER [False]; PRECISION [none]; TOK_PRECISION [PRECISION]
#   probe      TOK_LIN_EXP_DIR (required); SAVE_DIR [$PROJECT_ROOT/results/lin_probe/]; LIN_BSZ [128 per GPU];
#              NUM_CODE [256]; CKPT_EPOCH [5]; IMGNET_ROOT (with ILSVRC2012_img_train/ and ILSVRC2012_img_val/)
#   ours       LIN_EPOCHS [90]; LIN_BLR [0.1]; IMAGE_SIZE [256]; SUMMARY_DIR [$PROJECT_ROOT/results/summaries]; the
#              launchers' GPUS/gpus, NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH, GIGATOK_<STAGE>_ARGS
# Fixed official bugs: `VQ_CKPT=... \` before `fi` (a syntax error: the script ran nothing); SAVE_DIR (set by the
# instructions) was ignored; the evaluated checkpoint 0089.pt was fixed whatever the epochs.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/recipe.sh"

# Tokenizer
VQ_CKPT=${VQ_CKPT:-"None"}
VQ_EXP_DIR=${VQ_EXP_DIR:-}
TOK_CONFIG=${TOK_CONFIG:-}
TOK_EPOCH=${TOK_EPOCH:-"50"}
TOK_BSZ=${TOK_BSZ:-"128"}
FIX_DIM=${FIX_DIM:-"False"}
FROM_DECODER=${FROM_DECODER:-"False"}
TOK_EARLY_STOP_ITER=${TOK_EARLY_STOP_ITER:-"None"}

# Linear probe
PRECISION=${PRECISION:-"none"}
TOK_PRECISION=${TOK_PRECISION:-${PRECISION}}
TOK_LIN_EXP_DIR=${TOK_LIN_EXP_DIR:-}
NUM_CODE=${NUM_CODE:-256}
CKPT_EPOCH=${CKPT_EPOCH:-5}
LIN_BSZ=${LIN_BSZ:-128}
SAVE_DIR=${SAVE_DIR:-${PROJECT_ROOT}/results/lin_probe/}
LIN_EPOCHS=${LIN_EPOCHS:-90}
IMGNET_ROOT=${IMGNET_ROOT:-}

require TOK_CONFIG "the tokenizer YAML, e.g. configs/vq/VQ_BL256.yaml"
require TOK_LIN_EXP_DIR "the probe run, a folder under SAVE_DIR"
require IMGNET_ROOT "the ImageNet root with ILSVRC2012_img_train/ and ILSVRC2012_img_val/"
vq_ckpt_default
TOK_FLAGS=()
if [[ "${FIX_DIM}" == "True" ]]; then TOK_FLAGS+=(--fix-dim); fi
if [[ "${FROM_DECODER}" == "True" ]]; then TOK_FLAGS+=(--from-decoder); fi
lin_probe train_lin_probe.sh "${SAVE_DIR}" "${TOK_LIN_EXP_DIR}" "${TOK_PRECISION}" "${TOK_FLAGS[@]}"
settings TOK_CONFIG TOK_PRECISION FIX_DIM FROM_DECODER LIN_EPOCHS LIN_BSZ NUM_CODE IMAGE_SIZE
summary "${TOK_LIN_EXP_DIR}" --tok-ckpt "${VQ_CKPT}" \
    --tok-lin-probe "${SAVE_DIR}/${TOK_LIN_EXP_DIR}/lin_probe_acc.json" "${SETTINGS[@]}"
