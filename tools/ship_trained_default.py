#!/usr/bin/env python
"""Puts a trained embedded default into the model zoo, so that the demos start without training.

    python tools/ship_trained_default.py output/esc_net_tiny_shapes

Reads the run's ``model_final.pth`` (written by ``scripts/run_default.sh``) and writes
``model_zoo/esc_net_tiny_shapes.pth``, its model weights alone (the trainer's state only serves to resume a run),
with a report beside it and in ``model_zoo/manifest.json``: sha256 and size, the run's zero-shot figures
(``benchmark_results.json``), its iterations and the checkout it ran in (commit, whether tracked files differed).
The run must come from a clean checkout: a model of uncommitted code is refused. docs/model_zoo.md says how the
shipped one was made.
"""

import argparse
import json
import os
import subprocess
import sys

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(REPO_ROOT, "model_zoo")
NAME = "esc_net_tiny_shapes.pth"
PROG = "ship_trained_default.py"


def _git(folder: str, *args: str) -> str:
    return subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, check=True).stdout.strip()


def ship(run_dir: str) -> dict:
    """Writes the zoo's trained default from the run in ``run_dir``; returns its report."""
    from esc_net.pretrain.common import save_report, sha256
    from esc_net.utils.checkpoint import atomic_write

    checkpoint_path = os.path.join(run_dir, "model_final.pth")
    results_path = os.path.join(run_dir, "benchmark_results.json")
    for path in (checkpoint_path, results_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: give the output folder of a finished scripts/run_default.sh")
    try:
        commit, status = (
            _git(run_dir, "rev-parse", "HEAD"),
            _git(run_dir, "status", "--porcelain", "--untracked-files=no"),
        )
    except (OSError, subprocess.CalledProcessError) as error:
        raise ValueError(f"{run_dir} is not inside a git checkout: the report records the run's commit") from error
    if status:
        raise ValueError(f"the checkout of {run_dir} has uncommitted changes: ship a model of committed code only")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    with open(results_path) as f:
        results = json.load(f)["results"]
    path = os.path.join(ZOO, NAME)
    with atomic_write(path) as f:
        torch.save({"model": checkpoint["model"]}, f)
    report = {
        "weights": os.path.relpath(path, REPO_ROOT),
        "sha256": sha256(path),
        "bytes": os.path.getsize(path),
        "iterations": checkpoint.get("iteration", -1) + 1,
        "zero_shot": {
            result["benchmark"]: {k: v for k, v in result.items() if k.startswith("mIoU") or k == "hIoU"}
            for result in results.values()
        },
        "provenance": {"command": "scripts/run_default.sh", "commit": commit, "uncommitted_changes": False},
    }
    save_report(report, os.path.join(ZOO, os.path.splitext(NAME)[0] + ".json"))  # and its manifest entry
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", help="the output folder of scripts/run_default.sh")
    args = parser.parse_args()
    try:
        report = ship(args.run_dir)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"{PROG}: error: {error}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
