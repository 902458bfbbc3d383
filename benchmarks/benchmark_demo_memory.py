#!/usr/bin/env python
"""Peak memory of the web page's and the command-line demo's processing of one large image, and the time and
memory it takes them to refuse a PNG bomb.

    python benchmarks/benchmark_demo_memory.py                   # 4096x4096 and 8000x6000; 10, 150, 847 classes
    python benchmarks/benchmark_demo_memory.py --sizes 4096x4096 --classes 10 --top-k 5 --no-limits-row

Each measurement runs in a fresh process: the tiny config with random weights (memory does not depend on the
weights) is built, the vocabulary set and a small image segmented (text embeddings, allocator), then the peak
resident memory (VmHWM) is reset and the processing runs:

* page: ``Segmenter.__call__`` of the web page (read the upload, predict, draw the overlay, the legend and the
  score map of the first class), with the limits raised to the image;
* demo: ``segment_file`` of the command-line demo (read, predict, draw and write the overlay), the same limits;
* demo top-k: the same with ``--save-top-k K`` (``--top-k``, 5; 0 leaves it out): the model predicts at the
  image's size and the K best classes of every pixel are written, K x H x W labels and float16 scores.

The vocabularies are A-847's names (repeated, numbered, beyond 847) and, in the last row of each image (without
``--no-limits-row``), the longest one the demos accept: ``VocabularyLimits()``'s most classes, each a name of its
most characters, random letters without a space (the tokenizer's worst case).

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


def _vocabulary(classes: int, name_chars: int) -> list:
    """A-847's names (numbered beyond 847), or ``classes`` names of ``name_chars`` random letters."""
    from esc_net.data.class_names import load_class_names

    if name_chars:
        letters = np.random.default_rng(0).integers(ord("a"), ord("z") + 1, (classes, name_chars), np.uint8)
        return [row.tobytes().decode() for row in letters]
    names = load_class_names("ade20k_847")
    return [names[i % len(names)] + ("" if i < len(names) else f" {i}") for i in range(classes)]


def _measure(kind: str, image: str, classes: int, threads: int, top_k: int, name_chars: int) -> None:
    """One measurement in this process; prints "peak_gb model_gb seconds"."""
    import torch

    import esc_net
    from esc_net.config import load_config
    from esc_net.demo import cli, web
    from esc_net.demo.images import ImageLimits
    from esc_net.predictor import vocabulary_metadata
    from esc_net_runtime.vocabulary_rules import VocabularyLimits

    torch.set_num_threads(threads)
    cfg = load_config(TINY_CONFIG, ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"])
    torch.manual_seed(0)
    predictor = esc_net.ESCNetPredictor(cfg)
    vocabulary = _vocabulary(classes, name_chars)
    predictor.set_vocabulary(vocabulary)
    predictor(np.zeros((64, 64, 3), np.uint8), output="labels", top_k=min(5, classes))  # warm-up

    bomb = kind.endswith("bomb")
    height, width = cv2.imread(image, cv2.IMREAD_UNCHANGED).shape[:2] if not bomb else (0, 0)
    limits = ImageLimits() if bomb else ImageLimits(max(height, width), height * width)
    with tempfile.TemporaryDirectory() as output:
        if kind.startswith("page"):
            web.gradio()  # imported before the measurement: the page's server has it loaded
            default = VocabularyLimits()
            names = VocabularyLimits(max(name_chars, default.max_name_chars), max(classes, default.max_classes))
            segmenter = web.Segmenter(predictor, limits, vocabulary_limits=names)
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
                    "--save-top-k",
                    str(top_k if kind == "demo-topk" else 0),
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
    parser.add_argument("--top-k", type=int, default=5, help="K of the demo's --save-top-k column (0: no column)")
    parser.add_argument(
        "--limits-row",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a last row per image with the longest vocabulary the demos accept (VocabularyLimits' defaults)",
    )
    parser.add_argument("--name-chars", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=3, metavar=("KIND", "IMAGE", "CLASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        kind, image, classes = args.measure
        _measure(kind, image, int(classes), args.threads, args.top_k, args.name_chars)
        return

    def run(kind, image, classes, name_chars=0):
        command = [sys.executable, __file__, "--threads", str(args.threads), "--top-k", str(args.top_k)]
        command += ["--name-chars", str(name_chars), "--measure", kind, image, str(classes)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"{kind} {image} {classes}: failed\n{result.stderr[-3000:]}")
        peak, model, seconds, *refusal = result.stdout.strip().splitlines()[-1].split(" ", 3)
        return float(peak), float(model), float(seconds), " ".join(refusal)

    from esc_net_runtime.vocabulary_rules import VocabularyLimits

    limits = VocabularyLimits()
    rows = [(classes, 0, str(classes)) for classes in args.classes]
    if args.limits_row:
        rows.append(
            (limits.max_classes, limits.max_name_chars, f"{limits.max_classes} x {limits.max_name_chars} chars")
        )
    top_k = f" | demo --save-top-k {args.top_k}" if args.top_k else ""
    print(f"{datetime.date.today()}, commit {_commit()}, {_machine()}, {args.threads} torch threads")
    print(f"| image | classes | page | demo{top_k} | model's own |  (peak memory above the model's, time)")
    print("|---|---:|---:|---:|" + ("---:|" if args.top_k else "") + "---:|")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            width, height = map(int, size.split("x"))
            image = os.path.join(folder, f"{size}.png")
            _write_image(image, height, width)
            for classes, name_chars, label in rows:
                cells = []
                for kind in ("page", "demo") + (("demo-topk",) if args.top_k else ()):
                    peak, model, seconds, _ = run(kind, image, classes, name_chars)
                    cells.append(f"{peak:.2f} GB ({seconds:.0f} s)")
                print(f"| {size} | {label} | {' | '.join(cells)} | {model:.2f} GB |", flush=True)
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
