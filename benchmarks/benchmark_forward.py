#!/usr/bin/env python
"""Per-stage inference time and peak memory of the real-size ESC-Net (random weights).

Builds the model of a config (default: ViT-B/16 at 384x384, SAM ViT-B sizes, 4 ESC-Blocks) with random weights
and times a single 384x384 view for several vocabulary sizes. Stages are timed with forward hooks inside the
real forward pass: CLIP image encoder, text encoder (a fresh vocabulary each repeat, so no cache hit), PPG, SAM
blocks, VLF blocks, decoder; "other" is the rest (correlation, merges, heads). Prints medians over the repeats,
peak memory, and the ratio total / CLIP image encoder that the project steers by ("cached/img": the same
without the text encoder, whose output is cached per vocabulary at inference).

    .venv/bin/python benchmarks/benchmark_forward.py --classes 20 150 847 --repeats 3 [--device cuda] [--amp] [--full]
"""

import argparse
import contextlib
import os
import resource
import statistics
import time
from collections import defaultdict

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import esc_net
from esc_net.utils.flops import STAGES as STAGES_FLOPS
from esc_net.utils.flops import count_flops_per_stage

STAGES = ["clip_image", "clip_text", "ppg", "sam", "vlf", "decoder"]


class StageTimer:
    """Accumulates wall time spent inside modules, via forward pre/post hooks.

    Watched modules may run inside each other (a VLF block asks for the SAM guidance of each chunk of classes):
    time is exclusive, i.e. a stage's time stops while a nested watched module runs.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.totals = defaultdict(float)
        self._active = []  # [stage, start of its current stretch], innermost last

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def watch(self, module: torch.nn.Module, stage: str):
        def pre(mod, args):
            self._sync()
            now = time.perf_counter()
            if self._active:
                outer = self._active[-1]
                self.totals[outer[0]] += now - outer[1]
            self._active.append([stage, now])

        def post(mod, args, out):
            self._sync()
            now = time.perf_counter()
            inner, start = self._active.pop()
            self.totals[inner] += now - start
            if self._active:
                self._active[-1][1] = now

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    @contextlib.contextmanager
    def span(self, stage: str):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.totals[stage] += time.perf_counter() - start


def build(config_file: str, device: str, opts=()):
    """The model of ``config_file`` (plus ``opts``) with random weights, in eval mode, and its config."""
    cfg = get_cfg()
    esc_net.add_esc_net_config(cfg)
    esc_net.merge_config_file(cfg, config_file)
    cfg.merge_from_list(
        ["MODEL.ESC_NET.CLIP_PRETRAINED", "none", "MODEL.DEVICE", device, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
        + list(opts)
    )
    return build_model(cfg).eval(), cfg


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux reports KiB)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config-file", default=os.path.join(os.path.dirname(__file__), "..", "configs", "esc_net_vitb_384.yaml")
    )
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 150, 847])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (GPU)")
    parser.add_argument("--full", action="store_true", help="also time the whole inference of one image")
    parser.add_argument("--max-classes-per-view", type=int, default=0, help="MAX_CLASSES_PER_VIEW for --full")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs per stage (fvcore, one view)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides (KEY VALUE ...)")
    args = parser.parse_args()

    model, cfg = build(args.config_file, args.device, args.opts)
    size = cfg.MODEL.ESC_NET.CLIP_IMAGE_SIZE
    device = model.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()

    print(
        f"device: {device_description(device)}; config: {os.path.basename(args.config_file)}; "
        f"view {size}x{size}; amp: {args.amp}"
    )
    stage_table(model, size, args.classes, args.repeats, autocast)
    if args.flops:
        flops_table(model, size, args.classes)
    if args.full:
        model.inference = model.inference.replace(max_classes_per_view=args.max_classes_per_view)
        full_inference_table(model, args.classes, args.repeats, autocast)


def stage_table(model, size: int, class_counts, repeats: int, autocast):
    """Per-stage medians for one view, with a fresh vocabulary each repeat."""
    device = model.device
    timer = StageTimer(device)
    for block in model.blocks:
        if block.use_sam:
            timer.watch(block.prompt_generator, "ppg")
            timer.watch(block.sam, "sam")
        timer.watch(block.vlf, "vlf")
    timer.watch(model.decoder, "decoder")
    columns = " ".join(f"{s:>10}" for s in STAGES)
    print(f"{'N':>5} {columns} {'other':>8} {'total':>8} {'total/img':>9} {'cached/img':>10} {'peak MB':>9}")
    image = torch.randn(1, 3, size, size, device=device)
    for num_classes in class_counts:
        runs = defaultdict(list)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for repeat in range(repeats + 1):  # the first run warms up and is not counted
            names = [f"class {i} version {repeat}" for i in range(num_classes)]
            timer.totals.clear()
            with torch.no_grad(), autocast:
                with timer.span("total"):
                    with timer.span("clip_text"):
                        text = model.clip.encode_text(names)
                    with timer.span("clip_image"):
                        dense, skips = model.clip.encode_image(image)
                    corr = model.correlation(dense, text)
                    model.refine(corr, dense, skips, text.expand(1, -1, -1))
            if repeat:
                for stage in STAGES + ["total"]:
                    runs[stage].append(timer.totals[stage])
        med = {k: statistics.median(v) * 1000 for k, v in runs.items()}
        other = med["total"] - sum(med[s] for s in STAGES)
        print(
            f"{num_classes:>5} "
            + " ".join(f"{med[s]:>8.1f}ms" for s in STAGES)
            + f" {other:>6.1f}ms {med['total']:>6.1f}ms {med['total'] / med['clip_image']:>9.2f} "
            f"{(med['total'] - med['clip_text']) / med['clip_image']:>10.2f} {peak_memory_mb(device):>9.0f}"
        )


def flops_table(model, size: int, class_counts):
    """GFLOPs per stage of one view (fvcore's count, multiply-accumulates; see esc_net.utils.flops)."""
    previous = model.inference
    model.inference = previous.replace(mode="whole")
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, device=model.device)
    print("GFLOPs of one view (fvcore, multiply-accumulates):")
    print(f"{'N':>5} " + " ".join(f"{s:>10}" for s in STAGES_FLOPS) + f" {'total':>8}")
    for num_classes in class_counts:
        flops = count_flops_per_stage(model, image, [f"class {i}" for i in range(num_classes)])
        print(
            f"{num_classes:>5} "
            + " ".join(f"{flops[s] / 1e9:>10.1f}" for s in STAGES_FLOPS)
            + f" {flops['total'] / 1e9:>8.1f}"
        )
    model.inference = previous


def full_inference_table(model, class_counts, repeats: int, autocast):
    """The whole inference of one 512x683 image as evaluation runs it (the config's mode, sliding windows by
    default; the vocabulary's text embeddings cached after the warm-up)."""
    device = model.device
    image = torch.randint(0, 256, (3, 512, 683), dtype=torch.uint8)
    print(
        f"full inference of a 512x683 image: mode {model.inference.mode} ({model.inference.num_views} views), "
        f"MAX_CLASSES_PER_VIEW {model.inference.max_classes_per_view}"
    )
    print(f"{'N':>5} {'ms/image':>9} {'peak MB':>9}")
    for num_classes in class_counts:
        vocabulary = [f"class {i}" for i in range(num_classes)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for repeat in range(repeats + 1):
            timer = StageTimer(device)
            with autocast, timer.span("total"):
                model([{"image": image, "height": 512, "width": 683, "vocabulary": vocabulary}])
            if repeat:
                times.append(timer.totals["total"])
        print(f"{num_classes:>5} {statistics.median(times) * 1000:>7.1f}ms {peak_memory_mb(device):>9.0f}")


if __name__ == "__main__":
    main()
