"""Segments images into the classes of an open vocabulary with ESC-Net and draws the result.

The ``esc-net-demo`` command (``python demo/demo.py`` in a source checkout runs the same code):

    # the embedded default: the tiny model trained by scripts/run_default.sh, on the synthetic shapes
    esc-net-demo --config-file configs/esc_net_tiny_shapes.yaml \\
        --input datasets/synthetic_shapes/images/val --dataset-vocabulary synthetic_shapes_val \\
        --output output/demo --opts MODEL.WEIGHTS output/esc_net_tiny_shapes/model_final.pth

    # any class names; ';' separates classes, ',' separates the synonyms of one class
    esc-net-demo --config-file configs/esc_net_vitb_384.yaml --input 'photos/*.jpg' \\
        --vocabulary "cat; dog; sofa, couch; floor" --output output/demo --save-labels \\
        --opts MODEL.WEIGHTS model_final.pth MODEL.DEVICE cuda

Vocabulary (one of; default: the model's, MODEL.ESC_NET.VOCABULARY, else the config's first DATASETS.TEST):
  --vocabulary TEXT         classes separated by ';', synonyms of a class by ',': "cat; sofa, couch" is two
                            classes, the second one with two synonyms. May be repeated: each value adds classes.
  --vocabulary-file FILE    one class per line (synonyms by ','); blank lines and lines starting with '#' skipped.
  --dataset-vocabulary NAME the classes of a registered dataset, e.g. ade20k_150_val, synthetic_shapes_val.
  The overlay shows a class by its first synonym, in a colour of its own whatever the vocabulary (the dataset's
  colour for a class of the dataset named; grey for background-like names). A vocabulary of more than
  --max-classes (2000) names, or with a name of more than --max-name-chars (300) characters, is refused before
  its text is tokenised (the text encoder reads 77 tokens of a name at most); raise them for larger ones.

Outputs in --output, for each input image <stem>.<ext>:
  <stem>_overlay.png  the image with the segments and their class names (Detectron2's Visualizer), drawn with
                      its longer side shrunk to --display-side (2048) at most, and enlarged to 512 px for smaller
                      images so that the names stay legible
  <stem>_labels.png   (--save-labels) the label map at the input's size: the index of the best-scoring class
                      per pixel, uint8 PNG, or uint16 PNG for a vocabulary of more than 255 classes
  <stem>_scores.npy   (--save-scores) the per-class scores, float16 [N, H, W] in [0, 1]; needs N x H x W floats
                      in memory (without it, labels are computed in tiles whatever the image and vocabulary size)
  <stem>_topK.npz     (--save-top-k K) "labels" [K, H, W] (dtype as the label map) and "scores" float16
                      [K, H, W]: the K best classes of each pixel, best first
  <stem>_prompts.png  (--show-prompts CLASS) every ESC-Block's pseudo prompts for CLASS, one row per block: the
                      input, the class's correlation map, its kept region, its K-means regions and its pseudo
                      points (computed on one whole-image view)
  vocabulary.txt      the label index and class name of every class, one per line

Inputs (--input) are image files, folders (their .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp files) or glob patterns
(quote them so that the shell leaves them to this script). Images over --max-side (4096) or --max-pixels (16.8 M)
are refused from their header, before they are decoded (the web page's limits; raise them for larger photos).
A missing or unreadable image, a damaged or truncated JPEG (which OpenCV would decode only in part), an empty
vocabulary, a bad or unsafe config or weights that are unreadable or do not fit the config stop the demo with an
error message and exit status 1. Without --save-labels, --save-scores or --save-top-k the model predicts at the
overlay's size only, so memory does not grow with the image beyond the decoded image itself.
"""

import argparse
import glob
import logging
import os
from collections import Counter
from typing import List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

from esc_net.config import ConfigFileError, add_opts_argument, error_text, load_config
from esc_net.data import check_vocabulary, get_dataset_vocabulary
from esc_net.data.vocabulary import default_vocabulary_source
from esc_net.demo.images import (
    ImageLimits,
    ImageTooLargeError,
    UnreadableImageError,
    display_size,
    nearest_resize,
    read_image,
    resize_to,
)
from esc_net.predictor import ESCNetPredictor, class_colors, class_index, vocabulary_metadata
from esc_net.utils.label_maps import label_dtype
from esc_net.utils.prompt_vis import draw_image_prompts
from esc_net_runtime import vocabulary_rules
from esc_net_runtime.vocabulary_rules import VocabularyLimitError, VocabularyLimits

__all__ = [
    "DISPLAY_SIDE",
    "IMAGE_EXTENSIONS",
    "MIN_OVERLAY_SIDE",
    "InputError",
    "add_limit_arguments",
    "collect_inputs",
    "draw_overlay",
    "image_limits",
    "limit_option",
    "label_map",
    "main",
    "add_backend_argument",
    "as_array",
    "build_predictor",
    "palette",
    "parse_args",
    "parse_vocabulary_text",
    "prompt_class_index",
    "read_vocabulary_file",
    "resolve_vocabulary",
    "run",
    "segment",
    "segment_file",
    "segment_images",
    "setup_cfg",
    "vocabulary_limits",
    "write_vocabulary",
]

logger = logging.getLogger("esc_net.demo")

# The command's name in its usage and error messages (demo/demo.py passes its own).
PROG = "esc-net-demo"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Overlays of small images are drawn enlarged to this longer side, so that class names are legible.
MIN_OVERLAY_SIDE = 512
# Overlays of large images are drawn shrunk to this longer side (--display-side): drawing costs memory per pixel
# and per class present, so it is bounded here rather than by the photo.
DISPLAY_SIDE = 2048
# The overlay's opacity and the line between segments (Detectron2's draw_sem_seg at alpha 0.5, its off-white edge).
_OVERLAY_ALPHA = 0.5
_EDGE_COLOR = (255, 255, 240)


class InputError(Exception):
    """A problem with what the user gave (files, vocabulary, config, weights): reported without a traceback."""


def parse_args(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", metavar="FILE", help="an ESC-Net config (configs/*.yaml); needed by --backend pytorch"
    )
    parser.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="image files, folders of images or glob patterns"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results (created)")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument(
        "--vocabulary",
        action="append",
        metavar="TEXT",
        help="class names: ';' between classes, ',' between synonyms of one class; repeatable",
    )
    vocabulary.add_argument("--vocabulary-file", metavar="FILE", help="a text file with one class per line")
    vocabulary.add_argument("--dataset-vocabulary", metavar="NAME", help="the classes of a registered dataset")
    parser.add_argument("--save-labels", action="store_true", help="also write the label map PNG of each image")
    parser.add_argument(
        "--save-scores",
        action="store_true",
        help="also write the per-class scores (.npy; needs N x H x W floats in memory)",
    )
    parser.add_argument(
        "--save-top-k",
        type=int,
        default=0,
        metavar="K",
        help="also write the K best classes per pixel and their scores (.npz), in bounded memory",
    )
    parser.add_argument(
        "--show-prompts",
        metavar="CLASS",
        help="also draw every block's pseudo prompts for this class of the vocabulary",
    )
    parser.add_argument(
        "--display-side",
        type=int,
        default=DISPLAY_SIDE,
        metavar="PIXELS",
        help=f"longest side of the overlays drawn (default {DISPLAY_SIDE})",
    )
    add_limit_arguments(parser)
    add_backend_argument(parser)
    parser.add_argument("--device", help="run on this device (cpu, cuda, cuda:1); default: the config's MODEL.DEVICE")
    add_opts_argument(parser)
    return parser.parse_args(argv)


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """--backend, shared by the command line and the web page."""
    parser.add_argument(
        "--backend",
        nargs="+",
        default=["pytorch"],
        metavar="NAME",
        help="'pytorch' (the model of --config-file and --opts; the default) or 'onnxruntime DIR': the graphs that "
        "esc-net-export wrote into DIR, on ONNX Runtime (the deploy extra; --config-file, --opts and --device do not "
        "apply)",
    )


def build_predictor(args: argparse.Namespace, cfg=None):
    """The predictor ``--backend`` names: :class:`ESCNetPredictor` of ``cfg`` (default: :func:`setup_cfg` of the
    arguments), or :class:`esc_net_runtime.ONNXPredictor` of an exported folder. Returns it and the config (None
    for ONNX Runtime).

    Raises:
        InputError: --backend is neither form, a config is missing or does not apply, or the exported folder is
            refused (missing files, another format, onnxruntime not installed).
        OSError, ValueError, KeyError: from building the PyTorch predictor (weights missing or not fitting).
    """
    name, *folder = args.backend
    if name == "pytorch" and not folder:
        if cfg is None:
            if args.config_file is None:
                raise InputError(
                    "--backend pytorch needs --config-file (or run an exported model: --backend onnxruntime DIR)"
                )
            cfg = setup_cfg(args)
        return ESCNetPredictor(cfg), cfg
    if name == "onnxruntime" and len(folder) == 1:
        given = [
            flag
            for flag, value in (("--config-file", args.config_file), ("--opts", args.opts), ("--device", args.device))
            if value
        ]
        if given:
            raise InputError(
                f"--backend onnxruntime runs the exported graphs of {folder[0]}: {', '.join(given)} do not apply"
            )
        from esc_net_runtime import ONNXPredictor

        try:
            return ONNXPredictor(folder[0]), None
        except (ImportError, OSError, ValueError) as e:
            raise InputError(str(e)) from e
    raise InputError(f"--backend takes 'pytorch' or 'onnxruntime DIR', got {' '.join(args.backend)!r}")


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """--max-side, --max-pixels, --max-classes and --max-name-chars, shared by the command line and the web page
    (the same defaults)."""
    images, names = ImageLimits(), VocabularyLimits()
    for flag, default, metavar, what in (
        ("--max-side", images.max_side, "PIXELS", "longest image side accepted; checked before decoding"),
        ("--max-pixels", images.max_pixels, "PIXELS", "most pixels of an image accepted; checked before decoding"),
        ("--max-classes", names.max_classes, "N", "most class names of a vocabulary accepted"),
        (
            "--max-name-chars",
            names.max_name_chars,
            "N",
            "longest class name accepted, in characters; checked before the text is tokenised",
        ),
    ):
        parser.add_argument(flag, type=int, default=default, metavar=metavar, help=f"{what} (default {default})")


def image_limits(args: argparse.Namespace) -> ImageLimits:
    return ImageLimits(args.max_side, args.max_pixels)


def vocabulary_limits(args: argparse.Namespace) -> VocabularyLimits:
    return VocabularyLimits(args.max_name_chars, args.max_classes)


def limit_option(error: VocabularyLimitError) -> str:
    """The command-line option that raises the limit ``error`` names ("--max-classes", "--max-name-chars")."""
    return "--" + error.limit.replace("_", "-")


# ----------------------------------------------------------------------------------------------------------------
# inputs


def collect_inputs(specs: Sequence[str]) -> List[str]:
    """The image files named by ``specs`` (files, folders, glob patterns), in order, without repeats.

    Raises:
        InputError: a path does not exist, a folder holds no image, a pattern matches no file, or two inputs
            share a file stem (their outputs would overwrite each other).
    """
    paths: List[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(
                os.path.join(spec, name)
                for name in os.listdir(spec)
                if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(spec, name))
            )
            if not found:
                raise InputError(f"the folder {spec} holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.isfile(spec):
            found = [spec]
        elif any(c in spec for c in "*?["):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise InputError(f"the pattern {spec!r} matches no file")
        else:
            raise InputError(f"input image not found: {spec}")
        paths.extend(found)
    paths = list(dict.fromkeys(os.path.normpath(p) for p in paths))
    stems = Counter(_stem(p) for p in paths)
    clashes = sorted(p for p in paths if stems[_stem(p)] > 1)
    if clashes:
        raise InputError(f"these inputs share a file name stem, so their outputs would overwrite each other: {clashes}")
    return paths


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def parse_vocabulary_text(values: Sequence[str]) -> List[str]:
    """Class names from ``--vocabulary`` values: ';' separates classes (empty entries are dropped)."""
    return [name.strip() for value in values for name in value.split(";") if name.strip()]


def read_vocabulary_file(path: str) -> List[str]:
    """Class names from a file with one class per line; blank lines and ``#`` comment lines are skipped."""
    try:
        return vocabulary_rules.read_vocabulary_file(path)
    except (OSError, ValueError) as error:
        raise InputError(str(error)) from error


def resolve_vocabulary(args: argparse.Namespace) -> Optional[List[str]]:
    """The vocabulary the options ask for, checked (within ``--max-classes`` and ``--max-name-chars``); None when
    they name none (the model's default then).

    Raises:
        InputError: the vocabulary is over a limit (naming the option that raises it).
        ValueError, TypeError, KeyError: as :func:`check_vocabulary` and :func:`get_dataset_vocabulary`.
    """
    if args.vocabulary is not None:
        names = parse_vocabulary_text(args.vocabulary)
    elif args.vocabulary_file is not None:
        names = read_vocabulary_file(args.vocabulary_file)
    elif args.dataset_vocabulary is not None:
        names = get_dataset_vocabulary(args.dataset_vocabulary)
    else:
        return None
    try:
        return check_vocabulary(names, vocabulary_limits(args))
    except VocabularyLimitError as e:
        raise InputError(f"{e} (raise it with {limit_option(e)})") from e


def palette(cfg, dataset: Optional[str] = None) -> Optional[Metadata]:
    """The metadata whose ``stuff_colors`` draw the classes it has (:func:`class_colors`): ``dataset``'s, else
    that of the dataset the model's default vocabulary comes from (``cfg``'s; None for an exported model); None if
    neither names one."""
    if dataset is None and cfg is not None:
        source, _ = default_vocabulary_source(cfg)
        dataset = source if isinstance(source, str) else None
    return MetadataCatalog.get(dataset) if dataset else None


def prompt_class_index(vocabulary: Sequence[str], name: str) -> int:
    """The index of the class ``name`` (a vocabulary entry, or its first synonym as shown)."""
    index = class_index(vocabulary, name)
    if index is None:
        raise InputError(f"--show-prompts {name!r} is not a class of the vocabulary {list(vocabulary)}")
    return index


def setup_cfg(args: argparse.Namespace):
    """The frozen config: the file, then ``--opts``, then ``--device``."""
    if not os.path.isfile(args.config_file):
        raise InputError(f"config file not found: {args.config_file}")
    try:
        cfg = load_config(args.config_file, args.opts)  # YAML's safe loader, _BASE_ files included
    except ConfigFileError as e:
        raise InputError(str(e)) from e
    if args.device:
        cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# outputs


def _write_png(path: str, image: np.ndarray) -> None:
    if not cv2.imwrite(path, image):
        raise OSError(f"could not write {path}")


def draw_overlay(image_bgr: np.ndarray, labels: np.ndarray, metadata, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """The image with the label map's segments and class names drawn on it, at the display size.

    The segments are filled as Detectron2's ``Visualizer.draw_sem_seg(labels, alpha=0.5)`` fills them, with a
    light line between them, and the Visualizer writes each class's name where ``draw_sem_seg`` would (on its
    largest region). ``draw_sem_seg`` itself is not called: it keeps a float RGBA copy of the whole picture for
    every class whose region has a hole until it renders (16 bytes per pixel and class, gigabytes for a few
    hundred classes); here the fill is one uint8 picture, so memory grows with the display size only.

    Args:
        image_bgr: [H, W, 3] uint8.
        labels: [h, w] class indices into ``metadata.stuff_classes``, at the image's size or at its
            :func:`display_size` (what the model returns when asked for that size).
        max_side: the display size's longer side at most; smaller images are drawn enlarged to
            ``MIN_OVERLAY_SIDE`` instead.

    Returns:
        [h', w', 3] uint8 BGR, with h', w' the display size (or the enlarged one).
    """
    size = display_size(*image_bgr.shape[:2], max_side)
    image_rgb = np.ascontiguousarray(resize_to(image_bgr, size)[:, :, ::-1])
    labels = nearest_resize(labels, size)
    colors = np.asarray(metadata.stuff_colors, np.uint8)
    picture = cv2.addWeighted(image_rgb, 1 - _OVERLAY_ALPHA, colors[labels], _OVERLAY_ALPHA, 0)
    edges = np.zeros(size, bool)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:] |= labels[1:] != labels[:-1]
    picture[edges] = _EDGE_COLOR
    scale = max(1.0, MIN_OVERLAY_SIDE / max(size))
    visualizer = Visualizer(picture, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    areas = np.bincount(labels.ravel(), minlength=len(colors))
    for label in np.argsort(-areas, kind="stable")[: np.count_nonzero(areas)]:  # largest first, as draw_sem_seg
        text_color = visualizer._change_color_brightness(colors[label] / 255, brightness_factor=0.7)
        visualizer._draw_text_in_mask((labels == label).astype(np.uint8), metadata.stuff_classes[label], text_color)
    return visualizer.output.get_image()[:, :, ::-1]


def label_map(scores: np.ndarray) -> np.ndarray:
    """[H, W] index of the best-scoring class of [N, H, W] scores, as uint8 (N <= 255) or uint16."""
    return scores.argmax(axis=0).astype(label_dtype(scores.shape[0]))


def segment(predictor: ESCNetPredictor, image: np.ndarray, args: argparse.Namespace):
    """(label map as for the PNG, per-class scores [N, H, W] or None, top-k dict or None) of one image.

    Without ``--save-scores`` the model returns the label map (and the top-k) computed in tiles, so a large
    photo with a large vocabulary does not need N x H x W floats; when no file at the image's size is asked for,
    the label map is at the overlay's display size [h, w] only.
    """
    dtype = label_dtype(len(predictor.vocabulary))
    if args.save_scores:
        scores = as_array(predictor(image, output="scores")["sem_seg"])
        return label_map(scores), scores, None
    full_size = args.save_labels or args.save_top_k
    size = None if full_size else display_size(*image.shape[:2], args.display_side)
    result = predictor(image, output="labels", top_k=args.save_top_k, output_size=size)
    labels = _as_labels(result["sem_seg_labels"], dtype)
    if not args.save_top_k:
        return labels, None, None
    top = {
        "labels": _as_labels(result["sem_seg_topk_labels"], dtype),
        "scores": as_array(result["sem_seg_topk_scores"]),
    }
    return labels, None, top


def as_array(values) -> np.ndarray:
    """A PyTorch predictor's tensor (on any device) or an ONNX predictor's array, as a numpy array."""
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else values


def _as_labels(labels, dtype: np.dtype) -> np.ndarray:
    """The model's class indices as an array of the files' ``dtype``, without a copy where the bits are the same:
    indices are never negative, so the model's int16 (more than 255 classes) reads as the files' uint16. The top-k
    labels at the image's size are K x H x W of them (168 MB for K = 5 on a 4096x4096 photo)."""
    array = as_array(labels)
    return array.view(dtype) if array.dtype.itemsize == dtype.itemsize else array.astype(dtype)


def write_vocabulary(path: str, vocabulary: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{i}\t{name}\n" for i, name in enumerate(vocabulary))


# ----------------------------------------------------------------------------------------------------------------


def segment_file(
    predictor: ESCNetPredictor, path: str, args: argparse.Namespace, metadata, prompt_class: Optional[int] = None
) -> str:
    """Reads one image, segments it into the predictor's vocabulary and writes what ``args`` asks for into
    ``args.output``; returns the overlay's path. ``metadata``: the vocabulary's names and colours to draw."""
    try:
        image = read_image(path, image_limits(args))
    except UnreadableImageError as e:
        hint = " (raise them with --max-side / --max-pixels)" if isinstance(e, ImageTooLargeError) else ""
        raise InputError(f"{e}{hint}") from e
    labels, scores, top = segment(predictor, image, args)
    out = os.path.join(args.output, _stem(path))
    # The scores and the top-k (N or K x H x W at the image's size) are written and let go before the overlay is
    # drawn, so that they and the drawing's own memory are not held at the same time.
    if scores is not None:
        np.save(out + "_scores.npy", scores.astype(np.float16))
    if top is not None:
        np.savez(out + f"_top{args.save_top_k}.npz", **top)
    del scores, top
    _write_png(out + "_overlay.png", draw_overlay(image, labels, metadata, args.display_side))
    if args.save_labels:
        _write_png(out + "_labels.png", labels)
    if prompt_class is not None:
        _write_png(out + "_prompts.png", draw_image_prompts(predictor, image, prompt_class)[:, :, ::-1])
    return out + "_overlay.png"


def run(args: argparse.Namespace) -> List[str]:
    """Segments every input; returns the paths of the overlays written."""
    paths = collect_inputs(args.input)
    try:
        vocabulary = resolve_vocabulary(args)
        predictor, cfg = build_predictor(args)
    except (OSError, ValueError, KeyError, TypeError) as e:
        # A vocabulary that is empty or unknown, weights that are missing or do not fit the config.
        raise InputError(error_text(e)) from e
    if vocabulary is not None:
        predictor.set_vocabulary(vocabulary)
    vocabulary = predictor.vocabulary
    if vocabulary is None:
        raise InputError(
            "no vocabulary: give --vocabulary, --vocabulary-file or --dataset-vocabulary (the config sets neither "
            "MODEL.ESC_NET.VOCABULARY nor DATASETS.TEST to take one from)"
        )
    if not 0 <= args.save_top_k <= len(vocabulary):
        raise InputError(f"--save-top-k must be between 0 and the {len(vocabulary)} classes, got {args.save_top_k}")
    if args.show_prompts and cfg is None:
        raise InputError("--show-prompts draws the PyTorch model's pseudo prompts: it needs --backend pytorch")
    prompt_class = prompt_class_index(vocabulary, args.show_prompts) if args.show_prompts else None
    metadata = vocabulary_metadata(vocabulary, class_colors(vocabulary, palette(cfg, args.dataset_vocabulary)))
    os.makedirs(args.output, exist_ok=True)
    write_vocabulary(os.path.join(args.output, "vocabulary.txt"), vocabulary)
    logger.info(f"segmenting {len(paths)} image(s) into {len(vocabulary)} classes; results in {args.output}")

    overlays = [
        segment_file(predictor, path, args, metadata, prompt_class)
        for path in tqdm(paths, desc="ESC-Net demo", unit="img")
    ]
    logger.info(f"wrote {len(overlays)} overlay(s) to {args.output}")
    return overlays


def segment_images(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> List[str]:
    """The demo on the command line ``argv`` (default ``sys.argv[1:]``): returns the overlays written, or exits
    with ``"<prog>: error: <message>"`` (status 1) for a problem with the inputs."""
    args = parse_args(argv, prog)
    setup_logger(name="esc_net")
    setup_logger()  # detectron2's own messages (checkpoint loading)
    try:
        return run(args)
    except InputError as e:
        # The message says what is wrong and where; a traceback would only bury it.
        raise SystemExit(f"{prog}: error: {e}") from e


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> None:
    """The ``esc-net-demo`` command (its console script exits with what this returns: None is status 0)."""
    segment_images(argv, prog)
