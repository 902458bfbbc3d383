"""The laboratory's pre-training command, ``esc-net-pretrain {clip,sam} --config-file CONFIG [options]``.

Both stages read the model sizes from an ESC-Net config (the CLIP of ``MODEL.ESC_NET.CLIP_MODEL_CFG`` at
``CLIP_IMAGE_SIZE``; a SAM whose decoder has the ``SAM_*`` sizes) and write where that config reads the weights
from (``CLIP_PRETRAINED``, ``SAM_CHECKPOINT``) unless ``--output`` says otherwise, with a JSON report beside the
weights (``<output stem>.json``: settings, losses, zero-shot accuracy or single-point IoU, the weights' sha256, the
command, commit and thread count, times). A stage is skipped when it is finished: its output loads into the model
it describes and its report says it was trained (at least one step, a finite loss, the same sha256); ``--force``
trains again. Settings that cannot train (no step, no image, a batch larger than the images) are refused before
any work.

    esc-net-pretrain clip --config-file configs/esc_net_tiny_shapes.yaml
    esc-net-pretrain sam --config-file configs/esc_net_tiny_shapes.yaml --steps 300
"""

import argparse
import json
import logging
import math
import os
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from esc_net.config import add_opts_argument, load_config
from esc_net.modeling.backbone import backbone_shape
from esc_net.modeling.clip.build import load_weights_file
from esc_net.modeling.sam_projection import build_image_projection, load_projection_weights, read_projection_weights
from esc_net.pretrain import align as align_stage
from esc_net.pretrain import clip as clip_stage
from esc_net.pretrain import sam as sam_stage
from esc_net.pretrain.common import sha256
from esc_net.utils.checkpoint import READ_ERRORS, unreadable_weights_error

__all__ = ["PROG", "build_parser", "main", "pretrain"]

PROG = "esc-net-pretrain"
logger = logging.getLogger("esc_net.pretrain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    commands = (
        ("clip", clip_stage.pretrain_clip, "contrastive pre-training of the config's CLIP on captioned shapes"),
        ("sam", sam_stage.pretrain_sam, "class-agnostic pre-training of a SAM with the config's decoder sizes"),
        ("align", align_stage.align_projection, "fit the SAM blocks' image projection to SAM's own image embedding"),
    )
    outputs = {"clip": "CLIP_PRETRAINED", "sam": "SAM_CHECKPOINT", "align": "SAM_PROJECTION_WEIGHTS"}
    for name, stage, description in commands:
        command = stages.add_parser(name, help=description)
        defaults = stage.__kwdefaults__
        command.add_argument("--config-file", required=True, metavar="FILE", help="the ESC-Net config to pre-train for")
        command.add_argument("--output", help=f"weights file (default: the config's {outputs[name]})")
        options = ("steps", "batch_size", "num_images", "lr", "seed", "eval_period")
        for option in (o for o in options if o in defaults):
            command.add_argument(
                f"--{option.replace('_', '-')}",
                type=type(defaults[option]),
                default=defaults[option],
                help=f"default {defaults[option]}" + (" (0: only at the end)" if option == "eval_period" else ""),
            )
        command.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
        command.add_argument("--force", action="store_true", help="train even if the output is a finished stage")
        add_opts_argument(command)
    verify = stages.add_parser(
        "verify", help="check that the config's pre-trained files are finished stages that match their reports"
    )
    verify.add_argument("--config-file", required=True, metavar="FILE", help="the ESC-Net config whose files to check")
    add_opts_argument(verify)
    return parser


def unfinished_reason(path: str, load: Callable[[str], None]) -> Optional[str]:
    """Why the stage output ``path`` is not a finished stage (None when it is): it must load (``load(path)``
    raises otherwise), and its report (``<stem>.json``) must say that it was trained: at least one step, a finite
    final loss, and the sha256 of this very file when the report records one."""
    if not os.path.exists(path):
        return "it does not exist"
    try:
        load(path)
    except (FileNotFoundError, ValueError, *READ_ERRORS) as error:
        if isinstance(error, READ_ERRORS):
            error = unreadable_weights_error(path, error)
        return f"it does not load ({error})"
    report_path = _report(path)
    try:
        with open(report_path) as f:
            report = json.load(f)
        steps = report["steps_done"] if "steps_done" in report else report["settings"]["steps"]
        loss = report["final_loss"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its report {report_path} does not say it was trained ({type(error).__name__}: {error})"
    if not isinstance(steps, int) or steps < 1:
        return f"its report {report_path} records {steps} training steps"
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        return f"its report {report_path} records a final loss of {loss}"
    if "sha256" in report and report["sha256"] != sha256(path):
        return f"it is not the file its report {report_path} describes (sha256 differs)"
    return None


def _load_clip(model_cfg: dict, image_size: int) -> Callable[[str], None]:
    return lambda path: load_weights_file(clip_stage.build_clip(model_cfg, image_size)[0], path, "the config's CLIP")


def _load_sam(sam: torch.nn.Module) -> Callable[[str], None]:
    return lambda path: sam.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _load_projection(cfg) -> Callable[[str], None]:
    m = cfg.MODEL.ESC_NET
    projection = build_image_projection(m.SAM_IMAGE_PROJECTION, backbone_shape(cfg).embed_dim, m.SAM_EMBED_DIM)
    return lambda path: load_projection_weights(projection, read_projection_weights(path), path)


def _finished(path: str, load: Callable[[str], None], stage: str) -> bool:
    reason = unfinished_reason(path, load)
    if reason is None:
        logger.info("%s is a finished %s stage: skipping it (--force trains again)", path, stage)
    elif os.path.exists(path):
        logger.warning("%s is not a finished %s stage: %s; training again", path, stage, reason)
    return reason is None


def stage_files(cfg) -> Dict[str, Tuple[str, Callable[[str], None]]]:
    """The pre-trained files ``cfg`` reads that this command writes: stage -> (path, how to load it)."""
    m = cfg.MODEL.ESC_NET
    files = {}
    if m.CLIP_MODEL_CFG and m.CLIP_PRETRAINED:
        files["CLIP"] = (m.CLIP_PRETRAINED, _load_clip(m.CLIP_MODEL_CFG, m.CLIP_IMAGE_SIZE))
    if m.USE_SAM_BLOCK and m.SAM_CHECKPOINT:
        sizes = (m.CLIP_IMAGE_SIZE, m.SAM_EMBED_DIM, m.SAM_DEPTH, m.SAM_MLP_DIM, m.SAM_NUM_HEADS)
        files["SAM"] = (m.SAM_CHECKPOINT, _load_sam(sam_stage.build_sam(*sizes)))
    if m.USE_SAM_BLOCK and m.SAM_PROJECTION_WEIGHTS:
        files["alignment"] = (m.SAM_PROJECTION_WEIGHTS, _load_projection(cfg))
    return files


def verify(cfg) -> Dict[str, Optional[str]]:
    """path -> why it is not a finished stage (None when it is), for every file of :func:`stage_files`."""
    return {path: unfinished_reason(path, load) for path, load in stage_files(cfg).values()}


def pretrain(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Runs the stage ``argv`` names; returns its report, or None when its output is a finished stage.

    Raises:
        ValueError: ``verify`` found a file that is not a finished stage (all of them named, with the reason).
    """
    args = build_parser().parse_args(argv)
    # the sizes the pre-trained models must have: the CLIP of CLIP_MODEL_CFG at CLIP_IMAGE_SIZE, SAM's decoder of SAM_*
    cfg = load_config(args.config_file, args.opts)
    m = cfg.MODEL.ESC_NET
    if args.stage == "verify":
        problems = {path: reason for path, reason in verify(cfg).items() if reason}
        if problems:
            raise ValueError(
                "; ".join(f"{path} is not a finished stage: {reason}" for path, reason in problems.items())
            )
        logger.info("%s: every pre-trained file is a finished stage that matches its report", args.config_file)
        return None
    torch.set_num_threads(args.threads)
    common = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    if args.stage == "align":
        output = args.output or m.SAM_PROJECTION_WEIGHTS
        if not output:
            raise ValueError(f"{args.config_file} sets no MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS: give --output")
        if not args.force and _finished(output, _load_projection(cfg), "alignment"):
            return None
        return align_stage.align_projection(cfg, output, report_path=_report(output), **common)
    common.update(num_images=args.num_images, eval_period=args.eval_period)
    if args.stage == "clip":
        if not m.CLIP_MODEL_CFG:
            raise ValueError(
                f"{args.config_file}: the CLIP stage pre-trains the CLIP of MODEL.ESC_NET.CLIP_MODEL_CFG, "
                "which this config does not define"
            )
        output = args.output or m.CLIP_PRETRAINED
        if not args.force and _finished(output, _load_clip(m.CLIP_MODEL_CFG, m.CLIP_IMAGE_SIZE), "CLIP"):
            return None
        return clip_stage.pretrain_clip(
            m.CLIP_MODEL_CFG, m.CLIP_IMAGE_SIZE, output, report_path=_report(output), **common
        )
    output = args.output or m.SAM_CHECKPOINT
    sizes = (m.CLIP_IMAGE_SIZE, m.SAM_EMBED_DIM, m.SAM_DEPTH, m.SAM_MLP_DIM, m.SAM_NUM_HEADS)
    if not args.force and _finished(output, _load_sam(sam_stage.build_sam(*sizes)), "SAM"):
        return None
    return sam_stage.pretrain_sam(*sizes, output, report_path=_report(output), **common)


def _report(output: str) -> str:
    return os.path.splitext(output)[0] + ".json"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The console entry point: :func:`pretrain` with progress logged at INFO level; a bad config, output path or
    setting, or a diverged run, ends the process with its message and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        pretrain(argv)
    except (FileNotFoundError, ValueError, FloatingPointError) as error:
        sys.exit(f"{PROG}: error: {error}")
