#!/usr/bin/env python
"""Does SAM's knowledge reach a trained laboratory ESC-Net? Transfer IoU and inference knockouts, per trained run.

For every run folder given (a ``train_net.py`` OUTPUT_DIR holding ``config.yaml`` and ``model_final.pth``: the main
command's ``output/esc_net_tiny_shapes``, or the ablation benchmark's ``output/ablations/<variant>/seed<s>``):

(a) **SAM-transfer IoU** (``esc_net/evaluation/sam_transfer.py``): the single-point mask IoU of the pre-trained
    SAM's own mask decoder (the run's ``SAM_CHECKPOINT``, with its output heads) on held-out objects when its image
    embedding is SAM's own encoder's, each ESC-Block's projection of the run's CLIP features, the run's aligned
    start (its ``SAM_PROJECTION_WEIGHTS``, when it has one), a random projection, a least-squares fitted 1x1
    projection (and its R²), or nothing;
(b) **knockouts** (``esc_net/evaluation/knockouts.py``, with ``--knockouts``): the three benchmarks evaluated with
    the SAM blocks removed, every class given the next class's prompts, the mask prompt zeroed, the points removed.

Each run's figures are written to ``<run>/sam_transfer.json`` (and reused unless ``--force``); the summary (mean ±
sample standard deviation over the runs of each variant, a variant being the run's parent folder) is printed.

    .venv/bin/python benchmarks/benchmark_lab_sam_transfer.py output/esc_net_tiny_shapes --knockouts
    .venv/bin/python benchmarks/benchmark_lab_sam_transfer.py output/ablations/*/seed*
"""

import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Callable, Dict, List

import torch
from detectron2.config import get_cfg

import esc_net
from esc_net.engine import Trainer
from esc_net.evaluation.knockouts import KNOCKOUTS, knockout
from esc_net.evaluation.sam_transfer import transfer_ious
from esc_net.modeling.sam_projection import build_image_projection, load_projection_weights, read_projection_weights
from esc_net.pretrain.sam import render_objects, sam_from_checkpoint
from esc_net.utils.checkpoint import ESCNetCheckpointer, check_weights_fit

# (dataset, metric, heading) of the knockout table: the figures the laboratory's goals are stated in
METRICS = (
    ("synthetic_shapes_val", "mIoU", "Shapes seen: mIoU"),
    ("synthetic_shapes_val_unseen", "mIoU-unseen", "Shapes unseen: mIoU-unseen"),
    ("synthetic_shapes_val_all", "hIoU", "Shapes all: hIoU"),
)


def load_run(run: str, opts: List[str]):
    """The config and the trained model of a run folder."""
    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    esc_net.merge_config_file(cfg, os.path.join(run, "config.yaml"))
    cfg.merge_from_list(["MODEL.WEIGHTS", os.path.join(run, "model_final.pth"), "MODEL.DEVICE", "cpu", *opts])
    model = Trainer.build_model(cfg)
    checkpointer = ESCNetCheckpointer(model)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    check_weights_fit(checkpointer.incompatible, cfg.MODEL.WEIGHTS)
    return cfg, model.eval()


def measure_run(run: str, args) -> Dict:
    cfg, model = load_run(run, args.opts)
    m = cfg.MODEL.ESC_NET
    sam = sam_from_checkpoint(m.SAM_CHECKPOINT, decoder_heads=m.SAM_NUM_HEADS)
    size = m.CLIP_IMAGE_SIZE
    # the SAM stage's own held-out objects (esc_net/pretrain/sam.py: seed 0, stream "sam_eval"), and other images
    held_out = render_objects(0, "sam_eval", args.objects, size)
    fit_images = render_objects(0, "transfer_fit", args.fit_images, size).images
    projections = {}
    aligned = m.SAM_PROJECTION_WEIGHTS
    if aligned:  # the run's aligned start (esc-net-pretrain align's output), before ESC-Net's training moved it
        projections["aligned_projection"] = build_image_projection(
            m.SAM_IMAGE_PROJECTION, model.clip.output_shape().embed_dim, m.SAM_EMBED_DIM
        )
        load_projection_weights(projections["aligned_projection"], read_projection_weights(aligned), aligned)
    figures = {"transfer": transfer_ious(model, sam, held_out, fit_images, projections=projections), "knockouts": {}}
    if args.knockouts:
        for kind in KNOCKOUTS:
            cfg.defrost()
            cfg.OUTPUT_DIR = os.path.join(run, "knockouts", kind)  # the run's own benchmark table stays as it is
            with knockout(model, kind):
                results = Trainer.test(cfg, model)
            figures["knockouts"][kind] = {
                f"{dataset}/{metric}": results[dataset]["sem_seg"][metric] for dataset, metric, _ in METRICS
            }
    return figures


def variant_of(run: str) -> str:
    """The variant a run folder belongs to: the name of its parent folder (the ablation benchmark's layout)."""
    return os.path.basename(os.path.dirname(os.path.abspath(run))) or run


def measure_runs(
    runs: List[str],
    file_name: str,
    measure: Callable[[str], Dict],
    force: bool,
    complete: Callable[[Dict], bool] = lambda figure: True,
    show: Callable[[Dict], str] = json.dumps,
) -> Dict[str, Dict]:
    """{run: figures} for the run folders that hold a model_final.pth: read from ``file_name`` in the folder where it
    is there and ``complete``, else ``measure(run)``, written there and printed (``show``). Exits when none has a
    model."""
    figures = {}
    for run in runs:
        if not os.path.isfile(os.path.join(run, "model_final.pth")):
            print(f"skipping {run}: no model_final.pth", file=sys.stderr)
            continue
        path = os.path.join(run, file_name)
        if os.path.isfile(path) and not force:
            with open(path) as f:
                figures[run] = json.load(f)
            if complete(figures[run]):
                continue
        figures[run] = measure(run)
        with open(path, "w") as f:
            json.dump(figures[run], f, indent=1)
        print(f"{run}: {show(figures[run])}", flush=True)
    if not figures:
        sys.exit("no run folder with a model_final.pth")
    return figures


def _mean_std(values: List[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def summarize(figures: Dict[str, Dict]) -> str:
    """Markdown tables of ``figures`` (run folder -> its figures), one row per variant (the run's parent folder)."""
    variants = defaultdict(list)
    for run, figure in figures.items():
        variants[variant_of(run)].append(figure)
    transfer_rows = sorted({row for f in figures.values() for row in f["transfer"]}, key=_transfer_order)
    lines = ["| variant | runs | " + " | ".join(transfer_rows) + " |", "|" + "---|" * (len(transfer_rows) + 2)]
    for variant, runs in variants.items():
        cells = [_mean_std([100 * r["transfer"][row] if row.endswith("_r2") else r["transfer"][row]
                            for r in runs if row in r["transfer"]]) for row in transfer_rows]  # fmt: skip
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
    knocked = [(v, runs) for v, runs in variants.items() if all(r["knockouts"] for r in runs)]
    if knocked:
        lines += ["", "| variant | knockout | " + " | ".join(h for _, _, h in METRICS) + " |", "|---|---|---|---|---|"]
        for variant, runs in knocked:
            for kind in KNOCKOUTS:
                cells = [_mean_std([r["knockouts"][kind][f"{d}/{m}"] for r in runs]) for d, m, _ in METRICS]
                lines.append(f"| {variant} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _transfer_order(row: str):
    order = ["sam_encoder", "aligned", "block", "random_projection", "least_squares", "least_squares_r2", "no_image"]
    return next(i for i, prefix in enumerate(order) if row.startswith(prefix)), row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (config.yaml and model_final.pth)")
    parser.add_argument("--knockouts", action="store_true", help="also evaluate the benchmarks under each knockout")
    parser.add_argument("--objects", type=int, default=300, help="held-out objects prompted")
    parser.add_argument("--fit-images", type=int, default=1000, help="images the least-squares map is fitted on")
    parser.add_argument("--force", action="store_true", help="measure again runs that have sam_transfer.json")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for every run")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    figures = measure_runs(
        args.runs,
        "sam_transfer.json",
        lambda run: measure_run(run, args),
        force=args.force,
        complete=lambda figure: not args.knockouts or bool(figure["knockouts"]),
        show=lambda figure: json.dumps(figure["transfer"]),
    )
    print(summarize(figures))


if __name__ == "__main__":
    main()
