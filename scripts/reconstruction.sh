#!/usr/bin/env bash
# Reconstruct images with a GigaTok tokenizer through torchrun (official scripts/reconstruction.sh).
# Environment knobs (official names): GPUS (or lowercase gpus, as in the README), NNODES, NODE_RANK,
# MASTER_ADDR, PORT, TORCH_RUN_PATH, EVAL_PYTHON_PATH (default of --eval-python-path). Every argument is passed to
# gigatok.stages.reconstruct. Qualitative demo (PNGs of the inputs and reconstructions, grid.png):
#   gpus=1 bash scripts/reconstruction.sh --quant-way vq --data-path tests/ --image-size 256 \
#       --sample-dir results/reconstructions/vq --vq-ckpt VQ_SS256_e100.pt --model-config configs/vq/VQ_SS256.yaml \
#       --qualitative --lpips
# Quantitative evaluation (without --qualitative: PSNR, SSIM, LPIPS, codebook usage, rFID/sFID/IS/P/R on the 50k
# ImageNet val images) against the reference that scripts/val.sh builds from the same images:
#   bash scripts/val.sh --data-path /data/imagenet/val --sample-dir results/reconstructions
#   bash scripts/reconstruction.sh --data-path results/reconstructions/val_imagenet --vq-ckpt VQ_SS256_e100.pt \
#       --model-config configs/vq/VQ_SS256.yaml --gt-npz-path results/reconstructions/val_imagenet.npz
# It writes <sample-dir>/<folder>_results.json/.txt; --clear-cache then deletes the images and npz of the run,
# --merge only re-prints finished results, --no-lpips skips LPIPS (no VGG16 weights).
# Without a GPU it runs on CPU (gloo backend), one process per "GPU".
source "$(dirname "${BASH_SOURCE[0]}")/lib/torchrun_stage.sh"

run_stage gigatok.stages.reconstruct "$@"
