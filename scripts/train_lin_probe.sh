#!/usr/bin/env bash
# Linear probe of a frozen tokenizer's features through torchrun (official scripts/train_lin_probe.sh), e.g.
#   bash scripts/train_lin_probe.sh --data-root ${IMGNET_ROOT} --save-path results/lin_probe_tok \
#       --sub-exp-dir VQ_BL256 --model-config configs/vq/VQ_BL256.yaml --vq-ckpt VQ_BL256_e200.pt \
#       --epochs 90 --blr 0.1 --batch-size 128 --mixed-precision fp16 --ckpt-epoch 5 [--fix-dim | --from-decoder]
# Environment knobs (official names): GPUS (or lowercase gpus), NNODES, NODE_RANK, MASTER_ADDR, PORT,
# TORCH_RUN_PATH. Every argument is passed to gigatok.stages.lin_probe; rerunning the same command resumes.
# Without a GPU it runs on CPU (gloo backend), one process per "GPU".
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.stages.lin_probe "$@"
