#!/usr/bin/env bash
# Train a GigaTok tokenizer with FSDP2 through torchrun (official scripts/train_vq_fsdp.sh -> vq_train_fsdp.py):
# the Q-Former layers and the root are fully sharded; the small discriminator stays under DDP.
# Same environment knobs and arguments as scripts/train_vq.sh, e.g. the XL-XXL recipe:
#   gpus=8 bash scripts/train_vq_fsdp.sh --model-config configs/vq/VQ_XLXXL256.yaml \
#       --data-path ${IMGNET_ROOT}/ILSVRC2012_img_train/ --save-path results/tokenizers/vq --sub-exp-dir VQ_XLXXL256 \
#       --iterations 1500000 --global-batch-size 256 --mixed-precision bf16
set -x

GPUS=${gpus:-${GPUS:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)}}
if ! [ "${GPUS}" -ge 1 ] 2>/dev/null; then GPUS=1; fi  # no GPU visible: one CPU process
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PORT=${PORT:-55565}
export TOKENIZERS_PARALLELISM=true
if [ -z "${TORCH_RUN_PATH:-}" ]; then
    TORCH_RUN_PATH="$(command -v python || command -v python3) -m gigatok.launch"
fi
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

# --data-parallel fsdp comes first, so an explicit --data-parallel in "$@" still wins.
${TORCH_RUN_PATH} --nnodes=${NNODES} --nproc_per_node=${GPUS} --node_rank=${NODE_RANK} \
    --master_addr=${MASTER_ADDR} --master_port=${PORT} -m gigatok.train_vq --data-parallel fsdp "$@"
