#!/usr/bin/env bash
# Sample class-conditional images with a GPT and a GigaTok tokenizer through torchrun
# (official scripts/sample_c2i_visualization.sh). Environment knobs (official names): GPUS (or lowercase gpus),
# NNODES, NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH. Every argument is passed to gigatok.stages.sample_c2i_visualization:
#   bash scripts/sample_c2i_visualization.sh --quant-way=vq --image-size=256 --sample-dir=samples/demo \
#       --vq-ckpt VQ_XLXXL256_e300.pt --tok-config configs/vq/VQ_XLXXL256.yaml --gpt-model GPT-B \
#       --cfg-schedule constant --cfg-scale 4.0 --gpt-ckpt GPT_B.pt --precision fp16 \
#       --class-idx "22,388,90,978" --per-proc-batch-size 8 --qual-num 40
# Without a GPU it runs on CPU (gloo backend), one process per "GPU".
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.stages.sample_c2i_visualization "$@"
