#!/usr/bin/env python
"""Peak memory of the web page's and the command-line demo's processing of one large image, and the time and
memory it takes them to refuse a PNG bomb.

    python benchmarks/benchmark_demo_memory.py                   # 4096x4096 and 8000x6000; 10, 150, 847 classes
    python benchmarks/benchmark_demo_memory.py --sizes 4096x4096 --classes 10

Each measurement runs in a fresh process: the tiny config with random weights (memory does not depend on the
weights) is built, the vocabulary set and a small image segmented (text embeddings, allocator), then the peak
resident memory (VmHWM) is reset and the processing runs:

* page: ``Segmenter.__call__`` of the web page (read the upload, predict, draw the overlay, the legend and the
  score map of the first class), with the limits raised to the image;
* demo: ``segment_file`` of the command-line demo (read, predict, draw and write the overlay), the same limits.

The figure is the peak minus the resident memory just before (the model's own, also printed). The bomb is a
20000x20000 black 1-bit PNG (about 400 KB on disk, 1.2 GB decoded), given to both with their default limits.
Images are smooth random patterns (PNG), written once into a temporary folder.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
from benchmark_large_image import _proc_status_kb, _reset_peak_rss  # the same resident-memory measurement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "esc_net_tiny.yaml")
GB = 2**30


def _write_image(path: str, height: int, width: int) -> None:
    """A smooth random pattern (a small noise image enlarged), which PNG compresses to a few MB."""
    small = np.random.default_rng(0).integers(0, 256, (max(1, height // 64), max(1, width // 64), 3), np.uint8)
    if not cv2.imwrite(path, cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)):
        raise OSError(f"could not write {path}")


def _measure(kind: str, image: str, classes: int, threads: int) -> None:
    """One measurement in this process; prints "peak_gb model_gb seconds"."""
    import torch
    from detectron2.config import get_cfg

    import esc_net
    from esc_net.data.class_names import load_class_names
    from esc_net.demo import cli, web
    from esc_net.demo.images import ImageLimits
    from esc_net.predictor import vocabulary_metadata

    torch.set_num_threads(threads)
    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    esc_net.merge_config_file(cfg, TINY_CONFIG)
    cfg.merge_from_list(["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"])
    torch.manual_seed(0)
    predictor = esc_net.ESCNetPredictor(cfg)
    names = load_class_names("ade20k_847")
    vocabulary = [names[i % len(names)] + ("" if i < len(names) else f" {i}") for i in range(classes)]
    predictor.set_vocabulary(vocabulary)
    predictor(np.zeros((64, 64, 3), np.uint8), output="labels", top_k=min(5, classes))  # warm-up

    bomb = kind.endswith("bomb")
    height, width = cv2.imread(image, cv2.IMREAD_UNCHANGED).shape[:2] if not bomb else (0, 0)
    limits = ImageLimits() if bomb else ImageLimits(max(height, width), height * width)
    with tempfile.TemporaryDirectory() as output:
        if kind.startswith("page"):
            web.gradio()  # imported before the measurement: the page's server has it loaded
            segmenter = web.Segmenter(predictor, limits)
            call = lambda: segmenter(  # noqa: E731 (a thunk for the measurement helper)
                {"path": image, "orig_name": "image.png"},
                "; ".join(vocabulary),  # noqa: E731
                vocabulary[0],
            )
        else:
            args = cli.parse_args(
                [
                    "--config-file",
                    TINY_CONFIG,
                    "--input",
                    image,
                    "--output",
                    output,
                    "--max-side",
                    str(limits.max_side),
                    "--max-pixels",
                    str(limits.max_pixels),
                ]
            )
            metadata = vocabulary_metadata(vocabulary)
            call = lambda: cli.segment_file(predictor, image, args, metadata)  # noqa: E731
        _reset_peak_rss()
        base = _proc_status_kb("VmRSS") * 1024
        start = time.perf_counter()
        try:
            call()
            refused = ""
        except Exception as e:  # the bomb's refusal (gradio.Error, InputError) is what is measured
            refused = f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - start
        peak = _proc_status_kb("VmHWM") * 1024
    if bomb != bool(refused):
        raise SystemExit(f"unexpected outcome for {kind}: {refused or 'accepted'}")
    print(f"{(peak - base) / GB:.3f} {base / GB:.3f} {seconds:.2f} {refused}")


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4096x4096", "8000x6000"], help="WIDTHxHEIGHT")
    parser.add_argument("--classes", nargs="+", type=int, default=[10, 150, 847])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of each measurement")
    parser.add_argument("--measure", nargs=3, metavar=("KIND", "IMAGE", "CLASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        kind, image, classes = args.measure
        _measure(kind, image, int(classes), args.threads)
        return

    def run(kind, image, classes):
        command = [sys.executable, __file__, "--threads", str(args.threads), "--measure", kind, image, str(classes)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"{kind} {image} {classes}: failed\n{result.stderr[-3000:]}")
        peak, model, seconds, *refusal = result.stdout.strip().splitlines()[-1].split(" ", 3)
        return float(peak), float(model), float(seconds), " ".join(refusal)

    print(f"{datetime.date.today()}, commit {_commit()}, {_machine()}, {args.threads} torch threads")
    print("| image | classes | page: peak above the model | demo: peak above the model | model's own |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            width, height = map(int, size.split("x"))
            image = os.path.join(folder, f"{size}.png")
            _write_image(image, height, width)
            for classes in args.classes:
                page, model, page_s, _ = run("page", image, classes)
                demo, _, demo_s, _ = run("demo", image, classes)
                print(
                    f"| {size} | {classes} | {page:.2f} GB ({page_s:.0f} s) | {demo:.2f} GB ({demo_s:.0f} s) "
                    f"| {model:.2f} GB |",
                    flush=True,
                )
        from PIL import Image

        bomb = os.path.join(folder, "bomb.png")
        Image.new("1", (20000, 20000)).save(bomb, optimize=True)
        print(f"\nPNG bomb: 20000x20000, {os.path.getsize(bomb) / 1e3:.0f} KB on disk, default limits")
        for kind in ("page-bomb", "demo-bomb"):
            extra, _, seconds, refusal = run(kind, bomb, 10)
            print(
                f"- {kind.split('-')[0]}: refused in {seconds * 1e3:.1f} ms, {extra * 1024:.1f} MB above the model "
                f"({refusal})"
            )


if __name__ == "__main__":
    main()
