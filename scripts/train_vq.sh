#!/usr/bin/env bash
# Train a GigaTok tokenizer with DDP through torchrun (official scripts/train_vq.sh -> vq_train.py).
# Environment knobs (official names): GPUS (or lowercase gpus, as in the README), NNODES, NODE_RANK,
# MASTER_ADDR, PORT, TORCH_RUN_PATH. Every argument is passed to gigatok.train_vq, e.g.
#   gpus=8 bash scripts/train_vq.sh --model-config configs/vq/VQ_SS256.yaml \
#       --data-path ${IMGNET_ROOT}/ILSVRC2012_img_train/ --save-path results/tokenizers/vq --sub-exp-dir VQ_SS256 \
#       --iterations 1000000 --global-batch-size 128 --mixed-precision fp16
# Rerunning the same command resumes the run from its newest checkpoint. Without a GPU it runs on CPU (gloo).
set -x

# Lowercase gpus (per command, as in the official README) wins over GPUS (exported by set_env_vars.sh).
GPUS=${gpus:-${GPUS:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)}}
if ! [ "${GPUS}" -ge 1 ] 2>/dev/null; then GPUS=1; fi  # no GPU visible: one CPU process
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PORT=${PORT:-55565}
export TOKENIZERS_PARALLELISM=true
# Default launcher: torchrun behind gigatok.launch, which reports a failed worker without torchrun's traceback.
if [ -z "${TORCH_RUN_PATH:-}" ]; then
    TORCH_RUN_PATH="$(command -v python || command -v python3) -m gigatok.launch"
fi
# Make the package importable from any working directory (paths in the arguments stay relative to it).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

${TORCH_RUN_PATH} --nnodes=${NNODES} --nproc_per_node=${GPUS} --node_rank=${NODE_RANK} \
    --master_addr=${MASTER_ADDR} --master_port=${PORT} -m gigatok.train_vq "$@"
