#!/usr/bin/env bash
# ADM evaluation (IS, FID, sFID, precision, recall) of a sample batch against a reference batch: the official
# `python evaluations/c2i/evaluator.py REF.npz SAMPLE.npz`. One process (no torchrun: Inception and the metrics
# run on one device). Every argument is passed to gigatok.stages.evaluate, e.g.
#   bash scripts/evaluate.sh VIRTUAL_imagenet256_labeled.npz samples/GPT-B-size-256-...-seed-0.npz
# EVAL_PYTHON_PATH (printed by `bash env_install.sh --eval-env`) selects the TensorFlow ADM evaluator.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${repo_root}${PYTHONPATH:+:${PYTHONPATH}}"
exec "$(command -v python || command -v python3)" -m gigatok.stages.evaluate "$@"
