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
# pip cannot resolve the requirements of files installed that way (--no-deps), so the next step
# installs the ones the wheel declares itself.
D2_DIR="$VENV/detectron2-wheel"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ ! -d "$D2_DIR/detectron2" ] && ! "$PY" -c "import detectron2" >/dev/null 2>&1; then
  log "installing detectron2 (sal-detectron2 snapshot)"
  rm -rf "$D2_DIR.partial"
  "$PY" -m pip install --disable-pip-version-check -q --no-deps --only-binary=:all: \
    --python-version 3.10 --target "$D2_DIR.partial" "sal-detectron2==0.7.2" 2>&1 | filter_pip_noise
  rm -rf "$D2_DIR"
  mv "$D2_DIR.partial" "$D2_DIR"  # only a complete download counts as installed on the next run
fi
D2_REQS=""
if [ -d "$D2_DIR/detectron2" ]; then
  echo "$D2_DIR" > "$SITE/detectron2-wheel.pth"
  # detectron2's own requirements, from the wheel's metadata (its Requires-Dist lines, optional extras left
  # out; pip evaluates the remaining environment markers). The snapshot's metadata drops two requirements
  # that upstream detectron2 declares and imports at start-up (fvcore, iopath); they are added with
  # upstream's pins unless the metadata names them.
  D2_REQS="$VENV/detectron2-requirements.txt"
  "$PY" - "$D2_DIR" > "$D2_REQS" <<'PYEOF'
import importlib.metadata
import re
import sys

dists = list(importlib.metadata.distributions(path=[sys.argv[1]]))
if len(dists) != 1:
    sys.exit(f"expected one distribution in {sys.argv[1]}, found {len(dists)}")
requirements = [r for r in dists[0].requires or [] if not re.search(r";.*\bextra\b", r)]
named = {re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
upstream = {"fvcore": "fvcore>=0.1.5,<0.1.6", "iopath": "iopath>=0.1.7,<0.1.10"}
requirements += [spec for name, spec in upstream.items() if name not in named]
print("\n".join(requirements))
PYEOF
fi

# The package itself (editable) with the extras the two README commands need: dataset preparation, the web
# demo, ONNX export and its runtime, and the test suite; in the same pip call as detectron2's requirements, so
# that one resolution satisfies both (detectron2's numpy<2, for one, decides which OpenCV and ml_dtypes fit).
STAMP="$VENV/.esc_net_setup_stamp"
WANT="$(cat "$ROOT/setup.py" "$ROOT/scripts/setup_env.sh" ${D2_REQS:+"$D2_REQS"} | sha1sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  log "installing esc_net and its requirements"
  "${PIP[@]}" -e "$ROOT[prep,demo,deploy,test]" ${D2_REQS:+-r "$D2_REQS"} 2>&1 | filter_pip_noise
  echo "$WANT" > "$STAMP"
fi
"$PY" -c "import detectron2.config, open_clip, segment_anything, timm, esc_net, onnxruntime, tokenizers" \
  || { log "the environment in $VENV does not import; remove it and run again"; exit 1; }
log "environment ready: $VENV"
