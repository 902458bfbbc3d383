"""The laboratory's pre-training command, ``esc-net-pretrain {clip,sam} --config-file CONFIG [options]``.

Both stages read the model sizes from an ESC-Net config (the CLIP of ``MODEL.ESC_NET.CLIP_MODEL_CFG`` at
``CLIP_IMAGE_SIZE``; a SAM whose decoder has the ``SAM_*`` sizes) and write where that config reads the weights
from (``CLIP_PRETRAINED``, ``SAM_CHECKPOINT``) unless ``--output`` says otherwise, with a JSON report beside the
weights (``<output stem>.json``: settings, loss, zero-shot accuracy or single-point IoU, times). A stage whose
output already loads into the model it describes is skipped (``--force`` trains again).

    esc-net-pretrain clip --config-file configs/esc_net_tiny_shapes.yaml
    esc-net-pretrain sam --config-file configs/esc_net_tiny_shapes.yaml --steps 300
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

import torch

from esc_net.config import add_opts_argument, load_config
from esc_net.modeling.clip.build import load_weights_file
from esc_net.pretrain import clip as clip_stage
from esc_net.pretrain import sam as sam_stage
from esc_net.utils.checkpoint import READ_ERRORS

__all__ = ["PROG", "build_parser", "main", "pretrain"]

PROG = "esc-net-pretrain"
logger = logging.getLogger("esc_net.pretrain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    clip = stages.add_parser("clip", help="contrastive pre-training of the config's CLIP on captioned shapes")
    sam = stages.add_parser("sam", help="class-agnostic pre-training of a SAM with the config's decoder sizes")
    for command, stage in ((clip, clip_stage.pretrain_clip), (sam, sam_stage.pretrain_sam)):
        defaults = stage.__kwdefaults__
        command.add_argument("--config-file", required=True, metavar="FILE", help="the ESC-Net config to pre-train for")
        command.add_argument("--output", help="weights file (default: the config's CLIP_PRETRAINED / SAM_CHECKPOINT)")
        for option, kind in (("steps", int), ("batch_size", int), ("num_images", int), ("lr", float), ("seed", int)):
            command.add_argument(
                f"--{option.replace('_', '-')}", type=kind, default=defaults[option], help=f"default {defaults[option]}"
            )
        command.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
        command.add_argument("--force", action="store_true", help="train even if the output already loads")
        add_opts_argument(command)
    return parser


def _clip_loads(path: str, model_cfg: dict, image_size: int) -> bool:
    try:
        load_weights_file(clip_stage.build_clip(model_cfg, image_size)[0], path, "the config's CLIP")
    except (FileNotFoundError, ValueError, *READ_ERRORS) as error:
        if os.path.exists(path):
            logger.warning("%s does not load (%s): training again", path, error)
        return False
    return True


def _sam_loads(path: str, sam: torch.nn.Module) -> bool:
    try:
        sam.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (FileNotFoundError, *READ_ERRORS) as error:
        if os.path.exists(path):
            logger.warning("%s does not load (%s): training again", path, error)
        return False
    return True


def pretrain(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Runs the stage ``argv`` names; returns its report, or None when its output already loads."""
    args = build_parser().parse_args(argv)
    # the sizes the pre-trained models must have: the CLIP of CLIP_MODEL_CFG at CLIP_IMAGE_SIZE, SAM's decoder of SAM_*
    cfg = load_config(args.config_file, args.opts)
    m = cfg.MODEL.ESC_NET
    torch.set_num_threads(args.threads)
    common = dict(steps=args.steps, batch_size=args.batch_size, num_images=args.num_images, lr=args.lr, seed=args.seed)
    if args.stage == "clip":
        if not m.CLIP_MODEL_CFG:
            raise ValueError(
                f"{args.config_file}: the CLIP stage pre-trains the CLIP of MODEL.ESC_NET.CLIP_MODEL_CFG, "
                "which this config does not define"
            )
        output = args.output or m.CLIP_PRETRAINED
        model_cfg = m.CLIP_MODEL_CFG
        if not args.force and _clip_loads(output, model_cfg, m.CLIP_IMAGE_SIZE):
            logger.info("%s loads: the CLIP stage is done (--force trains again)", output)
            return None
        return clip_stage.pretrain_clip(model_cfg, m.CLIP_IMAGE_SIZE, output, report_path=_report(output), **common)
    output = args.output or m.SAM_CHECKPOINT
    sizes = (m.CLIP_IMAGE_SIZE, m.SAM_EMBED_DIM, m.SAM_DEPTH, m.SAM_MLP_DIM, m.SAM_NUM_HEADS)
    if not args.force and _sam_loads(output, sam_stage.build_sam(*sizes)):
        logger.info("%s loads: the SAM stage is done (--force trains again)", output)
        return None
    return sam_stage.pretrain_sam(*sizes, output, report_path=_report(output), **common)


def _report(output: str) -> str:
    return os.path.splitext(output)[0] + ".json"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The console entry point: :func:`pretrain` with progress logged at INFO level; a bad config or output path
    ends the process with its message and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        pretrain(argv)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"{PROG}: error: {error}")
