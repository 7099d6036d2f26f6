# Environment variables for the GigaTok scripts. Source it, don't run it:
#
#   . set_env_vars.sh
#
# Values already set in your shell win (except PROJECT_ROOT, which is always this folder), so you can
# export IMGNET_ROOT and friends in your shell profile or before sourcing. Safe under `set -u` / `set -e`.
# It also activates $PROJECT_ROOT/.venv when it exists and no virtualenv/conda env is active.

if [ -n "${BASH_VERSION:-}" ] && [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "set_env_vars.sh must be sourced, not run: . set_env_vars.sh" >&2
  exit 1
fi

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export PROJECT_ROOT

if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ] && [ -f "$PROJECT_ROOT/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "$PROJECT_ROOT/.venv/bin/activate"
fi

# torchrun of the active python (the one that has torch), else whatever is on PATH.
if [ -z "${TORCH_RUN_PATH:-}" ]; then
  # torchrun behind gigatok.infra.launch (same arguments; a failed worker is reported without torchrun's traceback).
  # Set TORCH_RUN_PATH to a torchrun binary to use it directly.
  _gigatok_python="$(command -v python 2>/dev/null || command -v python3 2>/dev/null || echo python)"
  TORCH_RUN_PATH="$_gigatok_python -m gigatok.infra.launch"
  unset _gigatok_python
fi
export TORCH_RUN_PATH

# Number of local GPUs: from nvidia-smi when it works, else 1 (CPU runs use one process).
if [ -z "${GPUS:-}" ]; then
  GPUS="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)"
  case "$GPUS" in '' | 0) GPUS=1 ;; esac
fi
export GPUS
export NNODES="${NNODES:-1}"
export NODE_RANK="${NODE_RANK:-0}"
export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
export PORT="${PORT:-3343}"

# Placeholders from the official file: fill them in (or export them beforehand) for the stages that need them.
export IMGNET_ROOT="${IMGNET_ROOT-}"            # ImageNet root holding ILSVRC2012_img_train/ and ILSVRC2012_img_val/
export VAL_PATH="${VAL_PATH-}"                  # folder of center-cropped val PNGs written for rFID
export EVAL_PYTHON_PATH="${EVAL_PYTHON_PATH-}"  # python of the separate evaluation environment
export WANDB_API_KEY="${WANDB_API_KEY-}"        # only for runs logged to Weights & Biases

export TF_CPP_MIN_LOG_LEVEL=2
export MKL_THREADING_LAYER=GNU

echo "set_env_vars.sh: PROJECT_ROOT=$PROJECT_ROOT GPUS=$GPUS TORCH_RUN_PATH=$TORCH_RUN_PATH" >&2
true
