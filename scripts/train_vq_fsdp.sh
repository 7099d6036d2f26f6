#!/usr/bin/env bash
# Train a GigaTok tokenizer with FSDP2 through torchrun (official scripts/train_vq_fsdp.sh -> vq_train_fsdp.py):
# --data-parallel fsdp (the official default: the Q-Former layers and the root fully sharded; sdp and hsdp as in
# scripts/train_c2i_fsdp.sh); the small discriminator stays under DDP.
# Same environment knobs and arguments as scripts/train_vq.sh, e.g. the XL-XXL recipe:
#   gpus=8 bash scripts/train_vq_fsdp.sh --model-config configs/vq/VQ_XLXXL256.yaml \
#       --data-path ${IMGNET_ROOT}/ILSVRC2012_img_train/ --save-path results/tokenizers/vq --sub-exp-dir VQ_XLXXL256 \
#       --iterations 1500000 --global-batch-size 256 --mixed-precision bf16
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

# --data-parallel fsdp comes first, so an explicit --data-parallel in "$@" still wins.
run_stage gigatok.stages.train_vq --data-parallel fsdp "$@"
