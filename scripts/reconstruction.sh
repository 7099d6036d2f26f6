#!/usr/bin/env bash
# Reconstruct images with a GigaTok tokenizer through torchrun (official scripts/reconstruction.sh).
# Environment knobs (official names): GPUS (or lowercase gpus, as in the README), NNODES, NODE_RANK,
# MASTER_ADDR, PORT, TORCH_RUN_PATH. Every argument is passed to gigatok.reconstruct, e.g.
#   gpus=1 bash scripts/reconstruction.sh --quant-way vq --data-path tests/ --image-size 256 \
#       --sample-dir results/reconstructions/vq --vq-ckpt VQ_SS256_e100.pt --model-config configs/vq/VQ_SS256.yaml \
#       --qualitative --lpips
# Without a GPU it runs on CPU (gloo backend), one process per "GPU".
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.reconstruct "$@"
