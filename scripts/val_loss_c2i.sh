#!/usr/bin/env bash
# Validation cross-entropy of a GPT checkpoint through torchrun (official scripts/val_loss_c2i.sh), e.g. on
# ImageNet val tokenized on the fly:
#   bash scripts/val_loss_c2i.sh --data-path ${VAL_PATH} --vq-ckpt VQ_BL256_e200.pt \
#       --tok-config configs/vq/VQ_BL256.yaml --gpt-model GPT-B --gpt-ckpt results/gpt/<run>/.../1500000.pt
# or on a code folder: --code-path <codes> --gpt-ckpt <ckpt>. Environment knobs (official names): GPUS (or
# lowercase gpus), NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH. Every argument is passed to
# gigatok.stages.val_loss_c2i. Without a GPU it runs on CPU (gloo backend), one process per "GPU".
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.stages.val_loss_c2i "$@"
