#!/usr/bin/env bash
# Train a GigaTok tokenizer with DDP through torchrun (official scripts/train_vq.sh -> vq_train.py).
# Environment knobs (official names): GPUS (or lowercase gpus, as in the README), NNODES, NODE_RANK,
# MASTER_ADDR, PORT, TORCH_RUN_PATH. Every argument is passed to gigatok.stages.train_vq, e.g.
#   gpus=8 bash scripts/train_vq.sh --model-config configs/vq/VQ_SS256.yaml \
#       --data-path ${IMGNET_ROOT}/ILSVRC2012_img_train/ --save-path results/tokenizers/vq --sub-exp-dir VQ_SS256 \
#       --iterations 1000000 --global-batch-size 128 --mixed-precision fp16
# Rerunning the same command resumes the run from its newest checkpoint. Without a GPU it runs on CPU (gloo).
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.stages.train_vq "$@"
