#!/usr/bin/env bash
# Train a GPT with FSDP2 (official scripts/train_c2i_fsdp.sh): scripts/train_c2i.sh plus --data-parallel fsdp, e.g.
#   bash scripts/train_c2i_fsdp.sh --code-path /data/codes/imagenet_code_c2i_flip_ten_crop --gpt-model GPT-XXL \
#       --sub-exp-dir GPT_XXL256_e300 --global-batch-size 512 --lr 1e-4 --iterations 750000 \
#       --lr-scheduler wsd --fract-decay 0.2 --warmup 200 --mixed-precision bf16
# Environment knobs (official names): GPUS (or lowercase gpus), NNODES, NODE_RANK, MASTER_ADDR, PORT,
# TORCH_RUN_PATH. Every argument is passed to gigatok.train_c2i; rerunning the same command resumes.
# Without a GPU it runs on CPU (gloo backend), one process per "GPU".
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
    --master_addr=${MASTER_ADDR} --master_port=${PORT} -m gigatok.train_c2i --data-parallel fsdp "$@"
