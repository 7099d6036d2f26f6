#!/usr/bin/env bash
# Train a GPT with FSDP2 (official scripts/train_c2i_fsdp.sh): scripts/train_c2i.sh plus --data-parallel sdp (the
# official default: gradients and optimizer state sharded; fsdp also shards the parameters, hsdp shards within a
# node and replicates across nodes; --grad-precision sets the gradient reduce dtype), e.g.
#   bash scripts/train_c2i_fsdp.sh --code-path /data/codes/imagenet_code_c2i_flip_ten_crop --gpt-model GPT-XXL \
#       --sub-exp-dir GPT_XXL256_e300 --global-batch-size 512 --lr 1e-4 --iterations 750000 \
#       --lr-scheduler wsd --fract-decay 0.2 --warmup 200 --mixed-precision bf16
# Environment knobs (official names): GPUS (or lowercase gpus), NNODES, NODE_RANK, MASTER_ADDR, PORT,
# TORCH_RUN_PATH. Every argument is passed to gigatok.stages.train_c2i; rerunning the same command resumes.
# Without a GPU it runs on CPU (gloo backend), one process per "GPU".
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

# --data-parallel sdp comes first, so an explicit --data-parallel in "$@" still wins.
run_stage gigatok.stages.train_c2i --data-parallel sdp "$@"
