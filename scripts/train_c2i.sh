#!/usr/bin/env bash
# Train a class-conditional GPT on pre-extracted codes through torchrun (official scripts/train_c2i.sh), e.g.
#   bash scripts/train_c2i.sh --code-path /data/codes/imagenet_code_c2i_flip_ten_crop --gpt-model GPT-B \
#       --sub-exp-dir GPT_B256_e300 --global-batch-size 256 --lr 1e-4 --iterations 1500000 \
#       --lr-scheduler wsd --fract-decay 0.2 --warmup 5000 --mixed-precision bf16 --ema
# Environment knobs (official names): GPUS (or lowercase gpus), NNODES, NODE_RANK, MASTER_ADDR, PORT,
# TORCH_RUN_PATH. Every argument is passed to gigatok.stages.train_c2i; rerunning the same command resumes.
# Without a GPU it runs on CPU (gloo backend), one process per "GPU".
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.stages.train_c2i "$@"
