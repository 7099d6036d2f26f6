#!/usr/bin/env bash
# Sample class-conditional images with a GPT and a GigaTok tokenizer through torchrun
# (official scripts/sample_c2i_visualization.sh). Environment knobs (official names): GPUS (or lowercase gpus),
# NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH. Every argument is passed to gigatok.sample_c2i_visualization:
#   bash scripts/sample_c2i_visualization.sh --quant-way=vq --image-size=256 --sample-dir=samples/demo \
#       --vq-ckpt VQ_XLXXL256_e300.pt --tok-config configs/vq/VQ_XLXXL256.yaml --gpt-model GPT-B \
#       --cfg-schedule constant --cfg-scale 4.0 --gpt-ckpt GPT_B.pt --precision fp16 \
#       --class-idx "22,388,90,978" --per-proc-batch-size 8 --qual-num 40
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
    --master_addr=${MASTER_ADDR} --master_port=${PORT} -m gigatok.sample_c2i_visualization "$@"
