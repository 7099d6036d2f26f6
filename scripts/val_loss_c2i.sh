#!/usr/bin/env bash
# Validation cross-entropy of a GPT checkpoint through torchrun (official scripts/val_loss_c2i.sh), e.g. on
# ImageNet val tokenized on the fly:
#   bash scripts/val_loss_c2i.sh --data-path ${VAL_PATH} --vq-ckpt VQ_BL256_e200.pt \
#       --tok-config configs/vq/VQ_BL256.yaml --gpt-model GPT-B --gpt-ckpt results/gpt/<run>/.../1500000.pt
# or on a code folder: --code-path <codes> --gpt-ckpt <ckpt>. Environment knobs (official names): GPUS (or
# lowercase gpus), NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH. Every argument is passed to
# gigatok.val_loss_c2i. Without a GPU it runs on CPU (gloo backend), one process per "GPU".
set -x

GPUS=${gpus:-${GPUS:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)}}
if ! [ "${GPUS}" -ge 1 ] 2>/dev/null; then GPUS=1; fi  # no GPU visible: one CPU process
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PORT=${PORT:-55565}
if [ -z "${TORCH_RUN_PATH:-}" ]; then
    TORCH_RUN_PATH="$(command -v python || command -v python3) -m gigatok.launch"
fi
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

${TORCH_RUN_PATH} --nnodes=${NNODES} --nproc_per_node=${GPUS} --node_rank=${NODE_RANK} \
    --master_addr=${MASTER_ADDR} --master_port=${PORT} -m gigatok.val_loss_c2i "$@"
