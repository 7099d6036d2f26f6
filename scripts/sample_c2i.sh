#!/usr/bin/env bash
# Sample class-conditional images for gFID and evaluate them through torchrun (LlamaGen's sample_c2i.sh; GigaTok's
# sample_c2i_cfg_search.py without --search). Environment knobs (official names): GPUS (or lowercase gpus), NNODES,
# NODE_RANK, MASTER_ADDR, PORT, TORCH_RUN_PATH. Every argument is passed to gigatok.stages.sample_c2i, e.g.
#   bash scripts/sample_c2i.sh --quant-way=vq --image-size=256 --sample-dir=results/gpt/GPT_B/samples \
#       --vq-ckpt VQ_XLXXL256_e300.pt --tok-config configs/vq/VQ_XLXXL256.yaml --gpt-model GPT-B \
#       --gpt-ckpt GPT_B.pt --cfg-schedule step --step-start-ratio 0.18 --cfg-scale 1.75 --precision none \
#       --per-proc-batch-size 16 --gt-npz-path VIRTUAL_imagenet256_labeled.npz
# Interrupted runs resume where they stopped (finished chunks are kept). Without a GPU it runs on CPU (gloo backend).
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.stages.sample_c2i "$@"
