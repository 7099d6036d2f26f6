#!/usr/bin/env bash
# CPU demo of GigaTok (python -m gigatok.demo will replace this script's body once the full pipeline exists).
# Today it runs the one stage that exists end to end: qualitative reconstruction of the bundled photos
# (tests/gt_qualitative) with the tiny tokenizer config. The tokenizer is UNTRAINED (random weights), so the
# reconstructions are noise: the demo shows the pipeline and its outputs, not quality. The trained
# tokenizer -> codes -> GPT -> samples -> metrics demo is tracked as issue 6.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${VIRTUAL_ENV:-}" ]]; then PY="$VIRTUAL_ENV/bin/python"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY="$(command -v python3 || command -v python)"; fi

"$PY" -m gigatok.reconstruct --qualitative --device cpu --num-workers 0 \
    --data-path tests/gt_qualitative --model-config configs/vq/VQ_debug.yaml --image-size 32 \
    --sample-dir results/demo/reconstructions "$@"
echo "demo: reconstructions written under results/demo/reconstructions/"
