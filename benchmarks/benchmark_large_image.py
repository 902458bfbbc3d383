#!/usr/bin/env python
"""Peak memory and time of predicting one large image: the bounded-memory label output against full scores.

    python benchmarks/benchmark_large_image.py                                # 8000x6000, 150 classes, labels
    python benchmarks/benchmark_large_image.py --output labels --top-k 3
    python benchmarks/benchmark_large_image.py --output scores --height 2000 --width 1500

The model is the tiny config with random weights (what is measured is the upsampling to the image's size, which
does not depend on the weights); the vocabulary is ADE20K-150's class names (cycled when --classes is larger).
On the CPU the peak is the process's resident memory (VmHWM, reset just before the call) minus its resident
memory before the call, so it counts the outputs as well as the working memory; on CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the call.
"""

import argparse
import os
import time

import numpy as np
import torch
from detectron2.config import get_cfg

import esc_net
from esc_net.data.class_names import load_class_names

TINY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "esc_net_tiny.yaml")
GB = 1e9


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets the resident-set high-water mark (VmHWM), Linux 4.0+.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=8000)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--output", choices=["labels", "scores"], default="labels")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    esc_net.merge_config_file(cfg, TINY_CONFIG)
    cfg.merge_from_list(["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.DEVICE", args.device])
    torch.manual_seed(0)
    predictor = esc_net.ESCNetPredictor(cfg)
    names = load_class_names("ade20k_150")
    predictor.set_vocabulary(
        [f"{names[i % len(names)]}{'' if i < len(names) else f' {i}'}" for i in range(args.classes)]
    )
    image = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    predictor(image[:64, :64], output=args.output, top_k=args.top_k)  # warm-up: text embeddings, allocator

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        base = _proc_status_kb("VmRSS") * 1024
    start = time.perf_counter()
    result = predictor(image, output=args.output, top_k=args.top_k)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if cuda else _proc_status_kb("VmHWM") * 1024) - base
    output_bytes = sum(t.numel() * t.element_size() for t in result.values())
    full_scores = args.classes * args.height * args.width * 4

    print(
        f"device {args.device}, {torch.get_num_threads()} CPU threads, image {args.height}x{args.width}, "
        f"{args.classes} classes, output {args.output!r}" + (f", top-{args.top_k}" if args.top_k else "")
    )
    print(f"  time            {seconds:.2f} s")
    print(f"  peak memory     {peak / GB:.2f} GB above the memory before the call (outputs included)")
    print(
        f"  outputs         {output_bytes / GB:.3f} GB: "
        + ", ".join(f"{k} {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in result.items())
    )
    print(f"  for reference, float32 scores [N, H, W] would take {full_scores / GB:.1f} GB")


if __name__ == "__main__":
    main()
