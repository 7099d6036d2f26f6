#!/usr/bin/env bash
# The CPU demo (python -m gigatok.stages.demo): tokenizer training -> reconstructions -> codes -> GPT training ->
# class-conditional samples -> metrics, on the built-in digits and photos, through the same entry points as the
# other scripts, in one process chain on the CPU. Writes results/demo/report.md; a re-run reuses finished stages,
# --fresh starts over. Every argument goes to gigatok.stages.demo (python -m gigatok.stages.demo --help).
# Python: the active virtualenv or conda env (as env_install.sh), else the repo's .venv, else python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${VIRTUAL_ENV:-}" ]]; then PY="$VIRTUAL_ENV/bin/python"
elif [[ -n "${CONDA_PREFIX:-}" ]]; then PY="$CONDA_PREFIX/bin/python"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY="$(command -v python3 || command -v python)"; fi

exec "$PY" -m gigatok.stages.demo "$@"
