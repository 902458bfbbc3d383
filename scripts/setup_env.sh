#!/usr/bin/env bash
# Creates the project's virtual environment and installs ESC-Net with everything it needs.
#
# Idempotent: a second run finds each step done and skips it. The environment lives in
# $ESC_NET_VENV (default: .venv at the repository root). A detectron2 that is already importable
# in that environment (e.g. built from source by the user) is kept as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ESC_NET_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

log() { echo "[setup_env] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)
# This machine's pip may list local package indexes; their "location is ignored" warnings are noise.
filter_pip_noise() { grep -v "is neither a file nor a directory" || true; }

# PyTorch first: torchvision must match it exactly, and detectron2 imports both.
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  log "installing torch and torchvision (a few minutes)"
  "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1" 2>&1 | filter_pip_noise
fi

# detectron2's authors do not publish it on PyPI. sal-detectron2 is a snapshot of upstream main
# shipped as a cp310 wheel; its Python code runs on newer Pythons (the compiled _C it carries is only
# needed by deformable convolutions and rotated boxes, which ESC-Net does not use), so we install the
# wheel's files for Python 3.10 into a side folder and put that folder on the environment's path.
if ! "$PY" -c "import detectron2" >/dev/null 2>&1; then
  log "installing detectron2 (sal-detectron2 snapshot)"
  SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  D2_DIR="$VENV/detectron2-wheel"
  rm -rf "$D2_DIR"
  "$PY" -m pip install --disable-pip-version-check -q --no-deps --only-binary=:all: \
    --python-version 3.10 --target "$D2_DIR" "sal-detectron2==0.7.2" 2>&1 | filter_pip_noise
  echo "$D2_DIR" > "$SITE/detectron2-wheel.pth"
fi

# The package itself, with its runtime and test requirements (detectron2's own runtime
# requirements are listed in setup.py because the wheel above was installed without them).
STAMP="$VENV/.esc_net_setup_stamp"
WANT="$(cat "$ROOT/setup.py" "$ROOT/scripts/setup_env.sh" | sha1sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  log "installing esc_net and its requirements"
  "${PIP[@]}" -e "$ROOT[test]" 2>&1 | filter_pip_noise
  echo "$WANT" > "$STAMP"
fi
"$PY" -c "import detectron2, open_clip, segment_anything, timm, esc_net" \
  || { log "the environment in $VENV does not import; remove it and run again"; exit 1; }
log "environment ready: $VENV"
