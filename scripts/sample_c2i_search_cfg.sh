#!/usr/bin/env bash
# Search the CFG scale with the lowest gFID through torchrun (official scripts/sample_c2i_search_cfg.sh, which runs
# sample_c2i_cfg_search.py). Environment knobs (official names): GPUS (or lowercase gpus), NNODES, NODE_RANK,
# MASTER_ADDR, PORT, TORCH_RUN_PATH. Every argument is passed to gigatok.stages.sample_c2i, e.g.
#   bash scripts/sample_c2i_search_cfg.sh --search --quant-way=vq --image-size=256 \
#       --sample-dir=results/gpt/GPT_B/samples --vq-ckpt VQ_XLXXL256_e300.pt --tok-config configs/vq/VQ_XLXXL256.yaml \
#       --gpt-model GPT-B --gpt-ckpt GPT_B.pt --cfg-schedule step --step-start-ratio 0.18 --precision none \
#       --per-proc-batch-size 16 --clear-cache --gt-npz-path VIRTUAL_imagenet256_labeled.npz
# One row per evaluated scale lands in results/gpt/GPT_B/search_results/samples.csv. Without a GPU it runs on CPU.
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.stages.sample_c2i "$@"
