#!/usr/bin/env python
"""FLOPs and parameters of an ESC-Net config, in the manner of Detectron2's ``tools/analyze_model.py``.

The model is built from the config with random weights (no CLIP or SAM file is read: CLIP_PRETRAINED "none",
SAM_CHECKPOINT ""), so any config can be analysed offline. FLOPs are fvcore's count (one multiply-accumulate is
one flop; element-wise ops are not counted) of one inference call on a random image, with attention
(``scaled_dot_product_attention``) counted explicitly; see :mod:`esc_net.utils.flops` for the stages and the
convention.

    # ViT-B/16: one 384x384 view, then the sliding-window inference the benchmarks use (640x640, 5 views)
    python tools/analyze_model.py --config-file configs/esc_net_vitb_384.yaml --classes 150 847 \\
        --tasks flop parameter --inference-mode whole
    python tools/analyze_model.py --config-file configs/esc_net_vitb_384.yaml --classes 847 --tasks flop

    # parameters per module, four levels deep
    python tools/analyze_model.py --config-file configs/esc_net_tiny.yaml --tasks parameter --max-depth 4
"""

import argparse
import logging
from typing import Dict, Optional, Sequence

# isort: off
import esc_net  # noqa: F401 (first: it imports fvcore without its deprecation noise)

# isort: on
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from fvcore.nn import parameter_count_table  # noqa: E402
from tabulate import tabulate  # noqa: E402

from esc_net.config import add_opts_argument, load_config
from esc_net.utils.flops import STAGES, count_flops, count_parameters_per_stage, split_by_stage

logger = logging.getLogger("esc_net.analyze_model")
# The tool's name in its usage and error messages.
PROG = "analyze_model.py"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--tasks", nargs="+", choices=["flop", "parameter"], default=["flop", "parameter"])
    parser.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=[150],
        metavar="N",
        help="vocabulary sizes to count FLOPs for (default: 150)",
    )
    parser.add_argument(
        "--inference-mode",
        choices=["whole", "sliding"],
        help="override MODEL.ESC_NET.INFERENCE_MODE (whole: one CLIP_IMAGE_SIZE view; sliding: "
        "SLIDING_RESIZE windows plus a global view)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input image size (default: the square the model resizes to, so no extra resize)",
    )
    parser.add_argument("--max-depth", type=int, default=3, help="depth of the per-module parameter table")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_opts_argument(parser)
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.classes):
        parser.error(f"--classes must be positive, got {args.classes}")
    return args


def setup_cfg(args: argparse.Namespace):
    """The config to analyse. Raises ConfigFileError for a refused file or override."""
    cfg = load_config(args.config_file, args.opts)
    # Random weights: the counts do not depend on them, and no weights file is needed.
    cfg.merge_from_list(
        [
            "MODEL.ESC_NET.CLIP_PRETRAINED",
            "none",
            "MODEL.ESC_NET.SAM_CHECKPOINT",
            "",
            "MODEL.WEIGHTS",
            "",
            "MODEL.DEVICE",
            args.device,
            "DATASETS.TRAIN",
            "()",
            "DATASETS.TEST",
            "()",
        ]
    )
    if args.inference_mode:
        cfg.MODEL.ESC_NET.INFERENCE_MODE = args.inference_mode
    cfg.freeze()
    return cfg


def stage_table(columns: Dict[str, Dict[str, int]], unit: float) -> str:
    """One row per stage (and the total), one column per entry of ``columns`` ({title: {stage: count}})."""
    rows = [[stage] + [c[stage] / unit for c in columns.values()] for stage in (*STAGES, "total")]
    return tabulate(rows, headers=["stage", *columns], tablefmt="pipe", floatfmt=",.2f")


def analyze_flops(model, cfg, args) -> Dict[int, Dict[str, int]]:
    """Counts and prints the FLOPs per stage for every vocabulary size; returns {N: {stage: flops}}."""
    m = cfg.MODEL.ESC_NET
    side = model.inference.input_size
    height, width = args.image_size or (side, side)
    views = model.inference.num_views
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    results, skipped = {}, set()
    for num_classes in args.classes:
        logger.info(f"counting FLOPs for {num_classes} classes ...")
        analysis = count_flops(model, image, [f"class number {i}" for i in range(num_classes)])
        results[num_classes] = split_by_stage(analysis.by_module(), model, root="model")
        skipped.update(analysis.unsupported_ops())
    print(
        f"\nGFLOPs of one inference call ({model.inference.mode}: {views} view(s) of "
        f"{m.CLIP_IMAGE_SIZE}x{m.CLIP_IMAGE_SIZE}; input {height}x{width}); "
        "fvcore convention, 1 multiply-accumulate = 1 flop"
    )
    print(stage_table({f"N={n}": r for n, r in results.items()}, 1e9))
    print(
        "without the text encoder (its embeddings are cached per vocabulary at inference): "
        + ", ".join(f"N={n}: {(r['total'] - r['clip_text']) / 1e9:,.2f}" for n, r in results.items())
    )
    if skipped:
        print(f"ops without a FLOP count (element-wise, reductions, indexing): {', '.join(sorted(skipped))}")
    return results


def analyze_parameters(model, args) -> None:
    print("\nParameters per module (fvcore's parameter_count_table):")
    print(parameter_count_table(model, max_depth=args.max_depth))
    columns = {
        "weights (M)": count_parameters_per_stage(model),
        "trainable (M)": count_parameters_per_stage(model, trainable_only=True),
    }
    print("\nWeights per stage (state dict: parameters and frozen buffers such as CLIP's key projections):")
    print(stage_table(columns, 1e6))


def main(argv: Optional[Sequence[str]] = None) -> Dict[int, Dict[str, int]]:
    """Prints the tables; returns the FLOPs per stage for every vocabulary size ({} without the flop task). A
    refused config ends the tool with ``"analyze_model.py: error: <message>"`` (status 1)."""
    args = parse_args(argv)
    setup_logger(name="esc_net")
    try:
        cfg = setup_cfg(args)
        model = build_model(cfg).eval()
    except ValueError as e:  # ConfigFileError and the modules' refusals of their keys name the file or the key
        raise SystemExit(f"{PROG}: error: {e}") from e
    if "parameter" in args.tasks:
        analyze_parameters(model, args)
    if "flop" in args.tasks:
        return analyze_flops(model, cfg, args)
    return {}


if __name__ == "__main__":
    main()
