#!/usr/bin/env python
"""The paper's ablations in the miniature laboratory: each variant trained with several seeds, mean and spread.

Every run is the embedded default's training (configs/esc_net_tiny_shapes.yaml: ESC-Net on the seen classes of
Synthetic Shapes, from the model zoo's pre-trained tiny CLIP, SAM and aligned projection) with the variant's config
overrides and ``SEED s``, followed by its zero-shot evaluation (seen, unseen and all-class benchmarks). Runs go
through ``train_net.py`` in subprocesses, ``--workers`` at a time, each in ``--processes`` CPU processes of one
thread (2, as the main command trains, so that the default row is the main command's figure); a run whose
``benchmark_results.json`` exists is not run again, so an interrupted benchmark resumes. The summary (mean +-
sample standard deviation over the seeds, and every seed's value) is printed and written to
``<output>/ablations.md`` and ``.json``.

    .venv/bin/python benchmarks/benchmark_lab_ablations.py                        # every variant, seeds 0 1 2
    .venv/bin/python benchmarks/benchmark_lab_ablations.py --variants default random_sam --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/benchmark_lab_ablations.py --summarize-only       # the table of what has finished

The pre-trained weights are the model zoo's (``--pretrained`` says where others are; docs/model_zoo.md).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "esc_net_tiny_shapes.yaml")

# The paper's reading of the SAM block's image projection: one 1x1 conv trained by the segmentation loss alone. The
# embedded default instead starts a 3x3-conv projection from the alignment stage's weights and keeps it there with
# the alignment term (docs/laboratory.md, "SAM's knowledge"); the "_paper" rows undo that.
PAPER_PROJECTION = [
    "MODEL.ESC_NET.SAM_IMAGE_PROJECTION",
    "linear",
    "MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS",
    "",
    "MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT",
    "0.0",
]
RANDOM_SAM = ["MODEL.ESC_NET.SAM_CHECKPOINT", "", "MODEL.ESC_NET.ALLOW_RANDOM_SAM", "True"]
POINTS_ONLY = ["MODEL.ESC_NET.PROMPT_TYPES", "['points']", "MODEL.ESC_NET.BLOCK_LOSS_WEIGHT", "0.4"]
MASK_ONLY = ["MODEL.ESC_NET.PROMPT_TYPES", "['mask']"]
VARIANTS: Dict[str, tuple] = {
    "default": (
        "the embedded default (pre-trained SAM, points + mask, 2 ESC-Blocks, aligned 3x3-conv projection, no class "
        "text in the blocks)",
        [],
    ),
    "paper_projection": ("the paper's projection: a 1x1 conv, not aligned, no alignment term", [*PAPER_PROJECTION]),
    # the settings of the embedded default before the laboratory: CLIP and SAM from random weights, all of CLIP
    # fine-tuned at the full learning rate
    "previous_default": (
        "CLIP and SAM from random weights, CLIP fully fine-tuned (the embedded default before the laboratory)",
        [
            "MODEL.ESC_NET.CLIP_PRETRAINED",
            "none",
            "MODEL.ESC_NET.CLIP_FINETUNE",
            "full",
            "SOLVER.CLIP_MULTIPLIER",
            "1.0",
            "MODEL.ESC_NET.SAM_CHECKPOINT",
            "",
            "MODEL.ESC_NET.ALLOW_RANDOM_SAM",
            "True",
            "SOLVER.SAM_MULTIPLIER",
            "1.0",
        ],
    ),
    "random_sam": ("SAM blocks from random weights (the projection still aligned)", [*RANDOM_SAM]),
    "random_sam_paper": ("SAM blocks from random weights, the paper's projection", [*RANDOM_SAM, *PAPER_PROJECTION]),
    "no_sam": (
        "no SAM block (prompts and SAM dropped; CAT-Seg-like aggregation)",
        ["MODEL.ESC_NET.USE_SAM_BLOCK", "False", "MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT", "0.0"],
    ),
    "text_guidance": (
        "the class text read by SAM's text token and the VLF text guidance (the paper's reading; version 4's default)",
        ["MODEL.ESC_NET.TEXT_GUIDANCE", "['sam', 'vlf']"],
    ),
    "sam_text_only": (
        "the class text read by SAM's text token only (the VLF text guidance a shared token)",
        ["MODEL.ESC_NET.TEXT_GUIDANCE", "['sam']"],
    ),
    "points_only": ("prompts: points only (deep supervision 0.4 trains the maps)", [*POINTS_ONLY]),
    "points_only_paper": ("prompts: points only, the paper's projection", [*POINTS_ONLY, *PAPER_PROJECTION]),
    "mask_only": ("prompts: mask only", [*MASK_ONLY]),
    "mask_only_paper": ("prompts: mask only, the paper's projection", [*MASK_ONLY, *PAPER_PROJECTION]),
    "blocks_1": ("1 ESC-Block", ["MODEL.ESC_NET.NUM_BLOCKS", "1"]),
    "blocks_3": ("3 ESC-Blocks", ["MODEL.ESC_NET.NUM_BLOCKS", "3"]),
    "mask_peak": (
        "pseudo mask relative to the map's single peak (the first reading)",
        ["MODEL.ESC_NET.PSEUDO_MASK", "peak"],
    ),
    "mask_region": (
        "pseudo mask: every kept pixel positive, per K-means region",
        ["MODEL.ESC_NET.PSEUDO_MASK", "region"],
    ),
    "dense_attention": (
        "CLIP's ordinary last block for the dense features",
        ["MODEL.ESC_NET.CLIP_DENSE_LAYER", "attention"],
    ),
    "skips_reversed": ("decoder skips deepest first (the first reading)", ["MODEL.ESC_NET.CLIP_SKIP_LAYERS", "[2, 1]"]),
    "deep_supervision": (
        "deep supervision of every block at 0.4 (the first reading)",
        ["MODEL.ESC_NET.BLOCK_LOSS_WEIGHT", "0.4"],
    ),
    "class_pad": (
        "class attention padded to 48 tokens (CAT-Seg pads to 256)",
        ["MODEL.ESC_NET.CLASS_ATTENTION_PAD", "48"],
    ),
    "qv_bias": (
        "CLIP's q/v biases fine-tuned too (the first reading)",
        ["MODEL.ESC_NET.CLIP_FINETUNE", "attention_with_bias"],
    ),
    # the parts of the default's alignment, one at a time
    "aligned_no_loss": (
        "the aligned 3x3-conv projection without the alignment term",
        ["MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT", "0.0"],
    ),
    "conv_unaligned": (
        "the 3x3-conv projection from random weights, no alignment term",
        ["MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS", "", "MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT", "0.0"],
    ),
}
# (dataset, metric, heading) columns of the summary
COLUMNS = (
    ("synthetic_shapes_val", "mIoU", "Shapes seen: mIoU"),
    ("synthetic_shapes_val_unseen", "mIoU-unseen", "Shapes unseen: mIoU-unseen"),
    ("synthetic_shapes_val_all", "mIoU-seen", "Shapes all: mIoU-seen"),
    ("synthetic_shapes_val_all", "mIoU-unseen", "Shapes all: mIoU-unseen"),
    ("synthetic_shapes_val_all", "hIoU", "Shapes all: hIoU"),
)


def run_one(variant: str, seed: int, args) -> Dict:
    """Trains and evaluates one (variant, seed); returns its benchmark results (from disk when already run)."""
    out = os.path.join(args.output, variant, f"seed{seed}")
    results = os.path.join(out, "benchmark_results.json")
    if not os.path.isfile(results):
        os.makedirs(out, exist_ok=True)
        command = [
            sys.executable,
            os.path.join(ROOT, "train_net.py"),
            "--config-file",
            CONFIG,
            "--resume",
            "--num-gpus",
            str(args.processes),
            "--dist-url",
            "auto",  # a free port: runs may overlap others
            "OUTPUT_DIR",
            out,
            "SEED",
            str(seed),
            "MODEL.ESC_NET.CLIP_PRETRAINED",
            os.path.join(args.pretrained, "clip_tiny_shapes.pt"),
            "MODEL.ESC_NET.SAM_CHECKPOINT",
            os.path.join(args.pretrained, "sam_tiny_shapes.pth"),
            "MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS",
            os.path.join(args.pretrained, "sam_projection_tiny_shapes.pth"),
            "SOLVER.CHECKPOINT_PERIOD",
            "100000",
        ]
        if args.iters:
            command += ["SOLVER.MAX_ITER", str(args.iters)]
        command += VARIANTS[variant][1] + list(args.opts)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        start = time.perf_counter()
        with open(os.path.join(out, "run.log"), "w") as log:
            status = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if status != 0:
            raise RuntimeError(f"{variant} seed {seed} failed (exit {status}); see {out}/run.log")
        print(f"{variant} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    with open(results) as f:
        return json.load(f)["results"]


def finished_runs(output: str, variants: Sequence[str]) -> Dict[str, Dict[int, Dict]]:
    """variant -> seed -> results of the runs under ``output`` that finished (their benchmark_results.json)."""
    runs: Dict[str, Dict[int, Dict]] = {}
    for variant in variants:
        folder = os.path.join(output, variant)
        seeds = sorted(int(n[4:]) for n in os.listdir(folder) if n.startswith("seed")) if os.path.isdir(folder) else []
        for seed in seeds:
            results = os.path.join(folder, f"seed{seed}", "benchmark_results.json")
            if os.path.isfile(results):
                with open(results) as f:
                    runs.setdefault(variant, {})[seed] = json.load(f)["results"]
    return runs


def _mean_std(values: List[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def summarize(runs: Dict[str, Dict[int, Dict]]) -> str:
    """The table of ``runs`` (variant -> seed -> results): a row per variant, over the seeds it has."""
    header = ["variant", "seeds"] + [heading for _, _, heading in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, by_seed in runs.items():
        cells = [variant, str(len(by_seed))]
        for dataset, metric, _ in COLUMNS:
            values = [r[dataset][metric] for r in by_seed.values() if r[dataset].get(metric) is not None]
            cells.append(_mean_std(values) + " (" + ", ".join(f"{v:.1f}" for v in values) + ")")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def welch(values: List[float], baseline: List[float]) -> Dict[str, float]:
    """The difference of the means of ``values`` and ``baseline`` (independent runs, unequal variances) with its 95%
    confidence interval (Welch's t) and the smallest difference that runs of this spread and number would detect
    with 80% power at the 5% level (two-sided), from the same t distribution."""
    from scipy import stats

    n, m = len(values), len(baseline)
    mean_v, mean_b = sum(values) / n, sum(baseline) / m
    var_v = sum((v - mean_v) ** 2 for v in values) / (n - 1)
    var_b = sum((v - mean_b) ** 2 for v in baseline) / (m - 1)
    se = math.sqrt(var_v / n + var_b / m)
    df = se**4 / ((var_v / n) ** 2 / (n - 1) + (var_b / m) ** 2 / (m - 1)) if se > 0 else n + m - 2
    t = stats.t.ppf(0.975, df)
    diff = mean_v - mean_b
    return {
        "difference": diff,
        "ci_low": diff - t * se,
        "ci_high": diff + t * se,
        "detectable": (t + stats.t.ppf(0.80, df)) * se,
        "df": df,
    }


def compare(runs: Dict[str, Dict[int, Dict]], baseline: str = "default") -> str:
    """The table of each variant's mean difference to ``baseline`` per column, with its 95% confidence interval
    and the smallest detectable difference (see :func:`welch`); a variant or baseline of fewer than 2 seeds is
    left out."""
    if len(runs.get(baseline, {})) < 2:
        return ""
    header = ["variant", "seeds"] + [heading for _, _, heading in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, by_seed in runs.items():
        if variant == baseline or len(by_seed) < 2:
            continue
        cells = [variant, f"{len(by_seed)} vs {len(runs[baseline])}"]
        for dataset, metric, _ in COLUMNS:
            values = [r[dataset][metric] for r in by_seed.values() if r[dataset].get(metric) is not None]
            base = [r[dataset][metric] for r in runs[baseline].values() if r[dataset].get(metric) is not None]
            w = welch(values, base)
            cells.append(
                f"{w['difference']:+.1f} [{w['ci_low']:+.1f}, {w['ci_high']:+.1f}] (MDE {w['detectable']:.1f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1, help="runs at a time")
    parser.add_argument("--processes", type=int, default=2, help="CPU training processes of one thread per run")
    parser.add_argument("--iters", type=int, default=0, help="training iterations (0: the config's)")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "ablations"))
    parser.add_argument(
        "--pretrained",
        default=os.path.join(ROOT, "model_zoo"),
        help="folder of the pre-trained CLIP, SAM and aligned projection (the model zoo's, or ESC_NET_FROM_SCRATCH's)",
    )
    parser.add_argument("--baseline", default="default", help="the variant the others are compared with")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="overrides for every run")
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="run nothing: summarize the finished runs of --variants found in --output, whatever their seeds",
    )
    args = parser.parse_args()
    if args.summarize_only:
        runs = finished_runs(args.output, args.variants)
    else:
        for name in ("clip_tiny_shapes.pt", "sam_tiny_shapes.pth", "sam_projection_tiny_shapes.pth"):
            if not os.path.isfile(os.path.join(args.pretrained, name)):
                sys.exit(f"{os.path.join(args.pretrained, name)} not found: see docs/model_zoo.md")
        jobs = [(v, s) for v in args.variants for s in args.seeds]
        with ThreadPoolExecutor(args.workers) as pool:
            done = list(pool.map(lambda job: run_one(*job, args), jobs))
        runs = {}
        for (variant, seed), results in zip(jobs, done):
            runs.setdefault(variant, {})[seed] = results
    if not runs:
        sys.exit(f"no finished run of {args.variants} under {args.output}")
    table = summarize(runs)
    differences = compare(runs, args.baseline)
    print(table + ("\n\n" + differences if differences else ""))
    notes = "\n".join(f"- {v}: {VARIANTS[v][0]}" for v in runs)
    explained = (
        f"\n\ndifference of the means to {args.baseline} [95% confidence interval, Welch's t] (MDE: the smallest "
        f"difference these runs detect with 80% power at the 5% level)\n\n{differences}"
        if differences
        else ""
    )
    with open(os.path.join(args.output, "ablations.md"), "w") as f:
        f.write(f"mean ± sample std over the seeds (each seed's value)\n\n{table}{explained}\n\n{notes}\n")
    with open(os.path.join(args.output, "ablations.json"), "w") as f:
        json.dump({"variants": {v: VARIANTS[v] for v in runs}, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
