#!/usr/bin/env bash
# Pre-extract tokenizer codes for AR training through torchrun (official scripts/extract_code_c2i.sh).
# Official recipe, env-driven: ten crops from a 1.1x center crop, resumable:
#   IMGNET_ROOT=/data/imagenet CODE_PATH=/data/codes/imagenet_code_c2i_flip_ten_crop VQ_CKPT=VQ_BL256_e200.pt \
#   TOK_CONFIG=configs/vq/VQ_BL256.yaml BSZ=32 bash scripts/extract_code_c2i.sh
# Environment knobs: IMGNET_ROOT (adds --data-path ${IMGNET_ROOT}/ILSVRC2012_img_train/), CODE_PATH, VQ_CKPT (the
# official script set VQ_CKPT but passed the unset $VQ_CKPT_PATH; both names work here, VQ_CKPT wins), TOK_CONFIG,
# BSZ, TEN_CROP=True, CROP_RANGE=1.1, RESUME=True, DEBUG=False (True: decode the first codes to PNGs), and the
# torchrun ones: GPUS (or lowercase gpus), NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH.
# Every argument is passed on to gigatok.stages.extract_codes after those (the last occurrence of a flag wins).
# Without a GPU it runs on CPU (gloo backend), one process per "GPU".
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

VQ_CKPT=${VQ_CKPT:-${VQ_CKPT_PATH:-}}
ARGS=()
if [ -n "${IMGNET_ROOT:-}" ]; then ARGS+=(--data-path "${IMGNET_ROOT}/ILSVRC2012_img_train/"); fi
if [ -n "${CODE_PATH:-}" ]; then ARGS+=(--code-path "${CODE_PATH}"); fi
if [ -n "${VQ_CKPT}" ]; then ARGS+=(--vq-ckpt "${VQ_CKPT}"); fi
if [ -n "${TOK_CONFIG:-}" ]; then ARGS+=(--model-config "${TOK_CONFIG}"); fi
if [ -n "${BSZ:-}" ]; then ARGS+=(--batch-size "${BSZ}"); fi
if [ "${TEN_CROP:-True}" != "False" ]; then ARGS+=(--ten-crop --crop-range "${CROP_RANGE:-1.1}"); fi
if [ "${RESUME:-True}" != "False" ]; then ARGS+=(--resume); fi
if [ "${DEBUG:-False}" != "False" ]; then ARGS+=(--debug); fi

run_stage gigatok.stages.extract_codes "${ARGS[@]}" "$@"
