#!/usr/bin/env python
"""Where the pixels of trained laboratory runs go: each class group's pixels predicted as the other group.

Evaluates every run folder's final model on its config's test benchmarks with the project's evaluator and reads,
besides the mean IoUs, the share of the seen classes' pixels predicted as an unseen name (``seen-as-unseen``) and
of the unseen classes' pixels predicted as a seen name (``unseen-as-seen``), for the benchmarks with class groups
(``esc_net/evaluation/sem_seg_evaluation.py``). On the unseen-only benchmark (the three textures seen, the objects'
names new), ``seen-as-unseen`` is how much of the background the new names take. Writes ``group_confusion.json``
into each run folder (and reads it back unless ``--force``); prints mean ± sample standard deviation per variant
(a run's parent folder, as the ablation benchmark lays them out).

    .venv/bin/python benchmarks/benchmark_lab_group_confusion.py output/ablations/default/seed* [--opts K V ...]
"""

import argparse
import os
from collections import defaultdict
from typing import Dict

import torch
from benchmark_lab_sam_transfer import _mean_std, load_run, measure_runs, variant_of

from esc_net.engine import Trainer

# (metric, heading) of every benchmark with class groups
METRICS = (
    ("mIoU-seen", "mIoU-seen"),
    ("mIoU-unseen", "mIoU-unseen"),
    ("seen-as-unseen", "seen as unseen %"),
    ("unseen-as-seen", "unseen as seen %"),
)


def measure_run(run: str, opts) -> Dict[str, Dict[str, float]]:
    """{dataset: {metric: value}} of the run's final model, for its test datasets with class groups."""
    cfg, model = load_run(run, opts)
    cfg.defrost()
    cfg.OUTPUT_DIR = os.path.join(run, "group_confusion")  # the run's own benchmark table stays as it is
    with torch.no_grad():
        results = Trainer.test(cfg, model)
    return {
        dataset: {metric: result["sem_seg"][metric] for metric, _ in METRICS}
        for dataset, result in results.items()
        if "seen-as-unseen" in result["sem_seg"]
    }


def summarize(figures: Dict[str, Dict]) -> str:
    """A markdown table: one row per variant and benchmark, mean ± sample standard deviation over its runs."""
    variants = defaultdict(list)
    for run, figure in figures.items():
        variants[variant_of(run)].append(figure)
    lines = ["| variant | runs | benchmark | " + " | ".join(h for _, h in METRICS) + " |", "|---|---|---|"]
    lines[1] += "---|" * len(METRICS)
    for variant, runs in variants.items():
        for dataset in runs[0]:
            cells = [_mean_std([r[dataset][m] for r in runs if dataset in r]) for m, _ in METRICS]
            lines.append(f"| {variant} | {len(runs)} | {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (config.yaml and model_final.pth)")
    parser.add_argument("--force", action="store_true", help="evaluate again runs that have group_confusion.json")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for every run")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    figures = measure_runs(args.runs, "group_confusion.json", lambda run: measure_run(run, args.opts), args.force)
    print(summarize(figures))


if __name__ == "__main__":
    main()
