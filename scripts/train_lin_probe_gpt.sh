#!/usr/bin/env bash
# Linear probe of a frozen GPT through torchrun (official scripts/train_lin_probe_gpt.sh), e.g. the AR-probe recipe:
#   bash scripts/train_lin_probe_gpt.sh --data-root ${IMGNET_ROOT} --save-path results/lin_probe_gpt \
#       --sub-exp-dir GPT_B_VQ_BL256 --model-config configs/vq/VQ_BL256.yaml --vq-ckpt VQ_BL256_e200.pt \
#       --gpt-model GPT-B --gpt-ckpt results/gpt/<run>/checkpoints/0250000.pt --epochs 90 --blr 0.1 \
#       --batch-size 128 --mixed-precision fp16 --num-code 256 --ckpt-epoch 5
# then (optional: training already ends with it) --eval --lin-probe-ckpt results/lin_probe_gpt/<exp>/checkpoints/0089.pt
# Environment knobs (official names): GPUS (or lowercase gpus), NNODES, NODE_RANK, MASTER_ADDR, PORT,
# TORCH_RUN_PATH. Every argument is passed to gigatok.stages.lin_probe_gpt; rerunning the same command resumes.
# Without a GPU it runs on CPU (gloo backend), one process per "GPU".
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.stages.lin_probe_gpt "$@"
