#!/usr/bin/env bash
# Build the rFID reference from the validation images through torchrun (official scripts/tokenizer/val.sh):
# center crops as PNGs in <sample-dir>/val_<dataset>/ and the shuffled <sample-dir>/val_<dataset>.npz that
# scripts/reconstruction.sh takes as --gt-npz-path. Runs once: a re-run with a complete npz does nothing.
# Environment knobs (official names): GPUS (or lowercase gpus), NNODES, NODE_RANK, MASTER_ADDR, PORT,
# TORCH_RUN_PATH. Every argument is passed to gigatok.stages.val_reference, e.g.
#   bash scripts/val.sh --data-path /data/imagenet/val --sample-dir results/reconstructions
# Flags: --data-path (required), --dataset {imagenet,coco}, --image-size 256, --sample-dir, --per-proc-batch-size,
# --global-seed (seeds the shuffle), --num-workers. The work is CPU only (one gloo process per "GPU").
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.stages.val_reference "$@"
