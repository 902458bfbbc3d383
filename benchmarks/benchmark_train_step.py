#!/usr/bin/env python
"""Time and peak memory of one real-size ESC-Net training iteration (random weights, random data).

Builds the model of a config (default: ViT-B/16 at 384x384, SAM ViT-B sizes, 4 ESC-Blocks) and its optimizer as
train_net.py does, then times forward + backward + optimizer step on a batch of random crops labelled with N
classes (default 171, COCO-Stuff's vocabulary size; the text encoder runs every iteration, as in training).
Prints the median over the repeats and the peak memory, in float32 and, with --amp, under bfloat16 autocast;
--checkpointing adds each precision with activation checkpointing (``--checkpointing only``: just those rows, for
a machine where the plain step does not fit: a CPU run that exceeds the RAM is killed, not reported). Ratios are
against the first row that fits.

    python benchmarks/benchmark_train_step.py --device cuda --amp --checkpointing [--batch 4] [--classes 171]
"""

import argparse
import contextlib
import os
import statistics
import time

import torch
from benchmark_forward import build, device_description, peak_memory_mb

from esc_net.solver import build_optimizer


def random_batch(batch: int, size: int, num_classes: int, vocabulary, generator: torch.Generator):
    return [
        {
            "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator),
            "sem_seg": torch.randint(0, num_classes, (size, size), generator=generator),
            "vocabulary": vocabulary,
        }
        for _ in range(batch)
    ]


def time_iterations(model, optimizer, batch, repeats: int, amp: bool):
    device = model.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(repeats + 1):  # the first iteration warms up and is not counted
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast:
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at iteration {step}: {losses}")
        if step:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, peak_memory_mb(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config-file", default=os.path.join(os.path.dirname(__file__), "..", "configs", "esc_net_vitb_384.yaml")
    )
    parser.add_argument("--classes", type=int, default=171)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="also time bfloat16 autocast")
    parser.add_argument(
        "--checkpointing",
        nargs="?",
        choices=["also", "only"],
        const="also",
        default=None,
        help="also (or only) time each precision with MODEL.ESC_NET.ACTIVATION_CHECKPOINTING",
    )
    args = parser.parse_args()

    model, cfg = build(args.config_file, args.device)
    size = cfg.MODEL.ESC_NET.CLIP_IMAGE_SIZE
    model.train()
    optimizer = build_optimizer(cfg, model)
    vocabulary = [f"class {i}" for i in range(args.classes)]
    batch = random_batch(args.batch, size, args.classes, vocabulary, torch.Generator().manual_seed(0))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device = model.device
    print(
        f"device: {device_description(device)}; config: {os.path.basename(args.config_file)}; "
        f"batch {args.batch} x {size}x{size}; "
        f"{args.classes} classes; {trainable / 1e6:.1f}M trainable parameters"
    )
    precisions = [("float32", False)] + ([("bfloat16", True)] if args.amp else [])
    settings = [] if args.checkpointing == "only" else [(p, amp, False) for p, amp in precisions]
    settings += [(p, amp, True) for p, amp in precisions] if args.checkpointing else []
    baseline = None
    for precision, amp, checkpointing in settings:
        model.activation_checkpointing = checkpointing
        try:
            ms, mb = time_iterations(model, optimizer, batch, args.repeats, amp)
        except torch.OutOfMemoryError:
            print(f"{precision:>9} checkpointing {str(checkpointing):>5}: out of memory")
            continue
        finally:
            optimizer.zero_grad(set_to_none=True)
        baseline = baseline or (ms, mb)
        print(
            f"{precision:>9} checkpointing {str(checkpointing):>5}: {ms:8.1f} ms/iter {args.batch * 1000 / ms:6.2f} "
            f"images/s  peak {mb:8.0f} MB  (time x{ms / baseline[0]:.2f}, memory x{mb / baseline[1]:.2f})"
        )


if __name__ == "__main__":
    main()
