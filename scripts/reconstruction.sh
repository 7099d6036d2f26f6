#!/usr/bin/env bash
# Reconstruct images with a GigaTok tokenizer through torchrun (official scripts/reconstruction.sh).
# Environment knobs (official names): GPUS (or lowercase gpus, as in the README), NNODES, NODE_RANK,
# MASTER_ADDR, PORT, TORCH_RUN_PATH. Every argument is passed to gigatok.reconstruct, e.g.
#   gpus=1 bash scripts/reconstruction.sh --quant-way vq --data-path tests/ --image-size 256 \
#       --sample-dir results/reconstructions/vq --vq-ckpt VQ_SS256_e100.pt --model-config configs/vq/VQ_SS256.yaml \
#       --qualitative --lpips
# Without a GPU it runs on CPU (gloo backend), one process per "GPU".
set -x

# Lowercase gpus (per command, as in the official README) wins over GPUS (exported by set_env_vars.sh).
GPUS=${gpus:-${GPUS:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)}}
if ! [ "${GPUS}" -ge 1 ] 2>/dev/null; then GPUS=1; fi  # no GPU visible: one CPU process
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PORT=${PORT:-55565}
# Default launcher: torchrun behind gigatok.launch, which reports a failed worker without torchrun's traceback.
if [ -z "${TORCH_RUN_PATH:-}" ]; then
    TORCH_RUN_PATH="$(command -v python || command -v python3) -m gigatok.launch"
fi
# Make the package importable from any working directory (paths in the arguments stay relative to it).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

${TORCH_RUN_PATH} --nnodes=${NNODES} --nproc_per_node=${GPUS} --node_rank=${NODE_RANK} \
    --master_addr=${MASTER_ADDR} --master_port=${PORT} -m gigatok.reconstruct "$@"
