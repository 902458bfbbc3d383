#!/usr/bin/env bash
# The embedded default, from nothing, on a CPU in a few minutes:
#   1. set up the environment (scripts/setup_env.sh, idempotent);
#   2. generate the Synthetic Shapes dataset (skipped when it is already there);
#   3. train the tiny ESC-Net (configs/esc_net_tiny_shapes.yaml) with train_net.py; the evaluation at the end
#      prints the mIoU table on the held-out split and writes benchmark_results.json;
#   4. run the demo on one validation image.
# A second run finds the dataset and a final checkpoint that loads, skips their work, and evaluates the checkpoint
# again; delete the output folder to train again. An interrupted training (even one killed while saving) resumes
# from its last checkpoint that loads.
#
# Environment knobs:
#   ESC_NET_OUTPUT          output folder (default: output/esc_net_tiny_shapes)
#   ESC_NET_DEFAULT_ITERS   training iterations (default: the config's SOLVER.MAX_ITER)
#   DETECTRON2_DATASETS     datasets root (default: ./datasets)
#   ESC_NET_NUM_TRAIN, ESC_NET_NUM_VAL   dataset size (default: the generator's, 240 and 60 images)
#   ESC_NET_VENV            the virtual environment (default: .venv)
#   ESC_NET_SKIP_SETUP=1    skip step 1 (the environment is known to be ready, e.g. inside the test suite)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "[run_default] $*"; }
START=$SECONDS

if [ "${ESC_NET_SKIP_SETUP:-0}" != 1 ]; then
  bash scripts/setup_env.sh
fi
PY="${ESC_NET_VENV:-$ROOT/.venv}/bin/python"
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$ROOT/datasets}"
CONFIG=configs/esc_net_tiny_shapes.yaml
OUTPUT="${ESC_NET_OUTPUT:-$ROOT/output/esc_net_tiny_shapes}"
CHECKPOINT="$OUTPUT/model_final.pth"

GENERATE_ARGS=()
if [ -n "${ESC_NET_NUM_TRAIN:-}" ]; then GENERATE_ARGS+=(--num-train "$ESC_NET_NUM_TRAIN"); fi
if [ -n "${ESC_NET_NUM_VAL:-}" ]; then GENERATE_ARGS+=(--num-val "$ESC_NET_NUM_VAL"); fi
CONFIG_OPTS=(OUTPUT_DIR "$OUTPUT")
if [ -n "${ESC_NET_DEFAULT_ITERS:-}" ]; then CONFIG_OPTS+=(SOLVER.MAX_ITER "$ESC_NET_DEFAULT_ITERS"); fi

log "generating the synthetic shapes dataset under $DETECTRON2_DATASETS"
"$PY" datasets/generate_synthetic_shapes.py "${GENERATE_ARGS[@]}"

# "Already trained" means a final checkpoint that loads, not merely a file of that name (a run killed by an
# older version could leave an empty one).
checkpoint_loads() {
  [ -f "$CHECKPOINT" ] && "$PY" -c '
import sys
from esc_net.utils.checkpoint import read_checkpoint_file
try:
    read_checkpoint_file(sys.argv[1])
except ValueError as error:
    sys.exit(f"[run_default] {error}")' "$CHECKPOINT"
}

if checkpoint_loads; then
  log "found $CHECKPOINT: skipping training (delete $OUTPUT to train again); evaluating it"
  "$PY" train_net.py --config-file "$CONFIG" --eval-only "${CONFIG_OPTS[@]}" MODEL.WEIGHTS "$CHECKPOINT"
else
  if [ -f "$CHECKPOINT" ]; then
    log "$CHECKPOINT does not load: training again from the last checkpoint that does"
  fi
  log "training $CONFIG on the CPU (evaluation on synthetic_shapes_val at the end)"
  "$PY" train_net.py --config-file "$CONFIG" --resume "${CONFIG_OPTS[@]}"
fi

VAL_IMAGE="$DETECTRON2_DATASETS/synthetic_shapes/images/val/00000.png"
log "running the demo on $VAL_IMAGE"
"$PY" demo/demo.py --config-file "$CONFIG" --input "$VAL_IMAGE" --output "$OUTPUT/demo" --save-labels \
  --opts MODEL.WEIGHTS "$CHECKPOINT"

MIOU="$("$PY" -c 'import json, sys; print("%.1f" % json.load(open(sys.argv[1]))["results"]["synthetic_shapes_val"]["mIoU"])' \
  "$OUTPUT/benchmark_results.json")"
log "done in $((SECONDS - START)) s"
log "held-out mIoU (synthetic_shapes_val): $MIOU"
log "checkpoint:  $CHECKPOINT"
log "metrics:     $OUTPUT/benchmark_results.json (per-class IoU also in per_class_iou.csv; losses in metrics.json)"
log "overlay:     $OUTPUT/demo/00000_overlay.png (label map: $OUTPUT/demo/00000_labels.png)"
