#!/usr/bin/env bash
# The embedded default, from nothing, on a CPU: the laboratory in miniature (README, "The laboratory").
#   1. set up the environment (scripts/setup_env.sh, idempotent);
#   2. generate the Synthetic Shapes world: training images of the seen classes, and the three zero-shot
#      benchmarks (seen, unseen, all classes);
#   3. take the pre-trained tiny CLIP, tiny SAM and aligned SAM projection of the model zoo (model_zoo/, checked
#      against its manifest), or, with ESC_NET_FROM_SCRATCH=1, make them again with esc-net-pretrain: the CLIP
#      (captions) and the SAM (masks) side by side, one CPU core each, then the projection's alignment (each stage
#      is skipped when it is finished);
#   4. train the tiny ESC-Net (configs/esc_net_tiny_shapes.yaml) on the seen classes from both, in two CPU
#      processes; the evaluation at the end prints the zero-shot table and writes benchmark_results.json;
#   5. run the demo on an image of unseen objects, with the unseen names in the vocabulary.
# A second run finds the dataset, the pre-trained weights, a final checkpoint that loads and its evaluation, skips
# their work and prints the table again; delete the output folders to start over. An interrupted training (even one
# killed while saving) resumes from its last checkpoint that loads.
#
# Environment knobs:
#   ESC_NET_OUTPUT          output folder (default: output/esc_net_tiny_shapes)
#   ESC_NET_FROM_SCRATCH=1  pre-train CLIP, SAM and the aligned projection again instead of using model_zoo/
#                           (about two hours on 2 cores: docs/model_zoo.md)
#   ESC_NET_PRETRAINED      where ESC_NET_FROM_SCRATCH=1 writes them (default: output/pretrained)
#   ESC_NET_DEFAULT_ITERS   ESC-Net training iterations (default: the config's SOLVER.MAX_ITER)
#   ESC_NET_CLIP_STEPS, ESC_NET_SAM_STEPS, ESC_NET_ALIGN_STEPS, ESC_NET_PRETRAIN_IMAGES   pre-training length with
#                           ESC_NET_FROM_SCRATCH=1 (default: esc-net-pretrain's)
#   ESC_NET_NUM_TRAIN, ESC_NET_NUM_VAL   dataset size (default: the generator's)
#   ESC_NET_PROCESSES       training processes (default 2: one per core of a 2-core machine)
#   DETECTRON2_DATASETS     datasets root (default: ./datasets)
#   ESC_NET_VENV            the virtual environment (default: .venv)
#   ESC_NET_SKIP_SETUP=1    skip step 1 (the environment is known to be ready, e.g. inside the test suite)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "[run_default] $*"; }
START=$SECONDS
declare -a TIMES=()
stage_done() { TIMES+=("$1: $((SECONDS - STAGE_START)) s"); STAGE_START=$SECONDS; }

if [ "${ESC_NET_SKIP_SETUP:-0}" != 1 ]; then
  bash scripts/setup_env.sh
fi
STAGE_START=$SECONDS
PY="${ESC_NET_VENV:-$ROOT/.venv}/bin/python"
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$ROOT/datasets}"
# One thread per process: the figures below are reproducible for a given machine and this setting, and the
# small matrices of the tiny models gain little from more threads per process.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CONFIG=configs/esc_net_tiny_shapes.yaml
OUTPUT="${ESC_NET_OUTPUT:-$ROOT/output/esc_net_tiny_shapes}"
FROM_SCRATCH="${ESC_NET_FROM_SCRATCH:-0}"
if [ "$FROM_SCRATCH" = 1 ]; then
  PRETRAINED="${ESC_NET_PRETRAINED:-$ROOT/output/pretrained}"
else
  PRETRAINED="$ROOT/model_zoo"
fi
CLIP_WEIGHTS="$PRETRAINED/clip_tiny_shapes.pt"
SAM_WEIGHTS="$PRETRAINED/sam_tiny_shapes.pth"
PROJECTION_WEIGHTS="$PRETRAINED/sam_projection_tiny_shapes.pth"
CHECKPOINT="$OUTPUT/model_final.pth"
PROCESSES="${ESC_NET_PROCESSES:-2}"
mkdir -p "$OUTPUT" "$PRETRAINED"

GENERATE_ARGS=()
if [ -n "${ESC_NET_NUM_TRAIN:-}" ]; then GENERATE_ARGS+=(--num-train "$ESC_NET_NUM_TRAIN"); fi
if [ -n "${ESC_NET_NUM_VAL:-}" ]; then GENERATE_ARGS+=(--num-val "$ESC_NET_NUM_VAL"); fi
PRETRAIN_ARGS=(--config-file "$CONFIG")
if [ -n "${ESC_NET_PRETRAIN_IMAGES:-}" ]; then PRETRAIN_ARGS+=(--num-images "$ESC_NET_PRETRAIN_IMAGES"); fi
CLIP_ARGS=(--output "$CLIP_WEIGHTS")
if [ -n "${ESC_NET_CLIP_STEPS:-}" ]; then CLIP_ARGS+=(--steps "$ESC_NET_CLIP_STEPS"); fi
SAM_ARGS=(--output "$SAM_WEIGHTS")
if [ -n "${ESC_NET_SAM_STEPS:-}" ]; then SAM_ARGS+=(--steps "$ESC_NET_SAM_STEPS"); fi
ALIGN_ARGS=(--output "$PROJECTION_WEIGHTS")
if [ -n "${ESC_NET_ALIGN_STEPS:-}" ]; then ALIGN_ARGS+=(--steps "$ESC_NET_ALIGN_STEPS"); fi
PRETRAINED_OPTS=(MODEL.ESC_NET.CLIP_PRETRAINED "$CLIP_WEIGHTS" MODEL.ESC_NET.SAM_CHECKPOINT "$SAM_WEIGHTS")
PRETRAINED_OPTS+=(MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS "$PROJECTION_WEIGHTS")
CONFIG_OPTS=(OUTPUT_DIR "$OUTPUT" "${PRETRAINED_OPTS[@]}")
if [ -n "${ESC_NET_DEFAULT_ITERS:-}" ]; then CONFIG_OPTS+=(SOLVER.MAX_ITER "$ESC_NET_DEFAULT_ITERS"); fi

log "generating the Synthetic Shapes world under $DETECTRON2_DATASETS"
"$PY" -m esc_net.data.prepare synthetic_shapes "${GENERATE_ARGS[@]}"
stage_done "dataset"

if [ "$FROM_SCRATCH" = 1 ]; then
  log "pre-training the tiny CLIP and the tiny SAM side by side, then aligning the SAM projection (logs: $PRETRAINED/*.log)"
  "$PY" -m esc_net.pretrain clip "${PRETRAIN_ARGS[@]}" "${CLIP_ARGS[@]}" > "$PRETRAINED/clip_tiny_shapes.log" 2>&1 &
  CLIP_PID=$!
  if ! "$PY" -m esc_net.pretrain sam "${PRETRAIN_ARGS[@]}" "${SAM_ARGS[@]}" > "$PRETRAINED/sam_tiny_shapes.log" 2>&1; then
    kill "$CLIP_PID" 2>/dev/null || true
    log "SAM pre-training failed; its log ends:"; tail -n 20 "$PRETRAINED/sam_tiny_shapes.log"; exit 1
  fi
  if ! wait "$CLIP_PID"; then
    log "CLIP pre-training failed; its log ends:"; tail -n 20 "$PRETRAINED/clip_tiny_shapes.log"; exit 1
  fi
  # the alignment reads the pre-trained CLIP and SAM just made: the config's own files are the model zoo's
  if ! "$PY" -m esc_net.pretrain align --config-file "$CONFIG" "${ALIGN_ARGS[@]}" --opts "${PRETRAINED_OPTS[@]::4}" \
      > "$PRETRAINED/sam_projection_tiny_shapes.log" 2>&1; then
    log "the SAM projection's alignment failed; its log ends:"; tail -n 20 "$PRETRAINED/sam_projection_tiny_shapes.log"
    exit 1
  fi
  grep -hE "zero-shot \(|single-point IoU on|projection aligned|finished .* stage" "$PRETRAINED"/*_tiny_shapes.log \
    | sed 's/^/[run_default]   /'
  stage_done "pre-training (CLIP and SAM in parallel, then the alignment)"
else
  log "using the model zoo's pre-trained CLIP, SAM and aligned projection ($PRETRAINED; docs/model_zoo.md)"
  if ! "$PY" -m esc_net.pretrain verify --config-file "$CONFIG" --opts "${PRETRAINED_OPTS[@]}"; then
    log "the model zoo's files do not match their manifest: restore them (git checkout model_zoo) or make them"
    log "again with ESC_NET_FROM_SCRATCH=1"
    exit 1
  fi
  stage_done "pre-trained weights checked"
fi

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

# --dist-url auto: a free port (Detectron2's default port is fixed per user, so two runs at once would collide)
TRAIN=("$PY" train_net.py --config-file "$CONFIG" --num-gpus "$PROCESSES" --dist-url auto)
RESULTS="$OUTPUT/benchmark_results.json"
if checkpoint_loads; then
  if [ -f "$RESULTS" ] && [ "$RESULTS" -nt "$CHECKPOINT" ]; then
    log "found $CHECKPOINT and its evaluation: skipping training and evaluation (delete $OUTPUT to train again)"
  else
    log "found $CHECKPOINT: skipping training (delete $OUTPUT to train again); evaluating it"
    "${TRAIN[@]}" --eval-only "${CONFIG_OPTS[@]}" MODEL.WEIGHTS "$CHECKPOINT"
    stage_done "evaluation"
  fi
else
  if [ -f "$CHECKPOINT" ]; then
    log "$CHECKPOINT does not load: training again from the last checkpoint that does"
  fi
  log "training $CONFIG on the seen classes ($PROCESSES CPU processes; zero-shot evaluation at the end)"
  "${TRAIN[@]}" --resume "${CONFIG_OPTS[@]}"
  stage_done "ESC-Net training and evaluation"
fi

DEMO_IMAGE="$DETECTRON2_DATASETS/synthetic_shapes/images/val_unseen/00000.png"
log "running the demo on $DEMO_IMAGE with the unseen benchmark's vocabulary (unseen objects and the textures)"
"$PY" demo/demo.py --config-file "$CONFIG" --input "$DEMO_IMAGE" --output "$OUTPUT/demo" --save-labels \
  --dataset-vocabulary synthetic_shapes_val_unseen --opts MODEL.WEIGHTS "$CHECKPOINT"
stage_done "demo"

"$PY" - "$RESULTS" <<'PYEOF'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
for name, r in results.items():
    groups = "  ".join(f"{k} {r[k]:.1f}" for k in ("mIoU-seen", "mIoU-unseen", "hIoU") if r.get(k) is not None)
    print(f"[run_default] {r['benchmark']:14s} mIoU {r['mIoU']:.1f}  {groups}")
PYEOF
STAGES="$(printf '%s; ' "${TIMES[@]}")"
log "stage times: ${STAGES%; }"
log "done in $((SECONDS - START)) s"
log "pre-trained: $CLIP_WEIGHTS, $SAM_WEIGHTS, $PROJECTION_WEIGHTS (reports: $PRETRAINED/manifest.json)"
log "checkpoint:  $CHECKPOINT"
log "metrics:     $OUTPUT/benchmark_results.json (per-class IoU also in per_class_iou.csv; losses in metrics.json)"
log "overlay:     $OUTPUT/demo/00000_overlay.png (label map: $OUTPUT/demo/00000_labels.png)"
