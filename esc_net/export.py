"""ESC-Net as ONNX graphs for a runtime without PyTorch: ``esc-net-export`` (also ``tools/export_model.py``).

The export writes a folder that :class:`esc_net_runtime.ONNXPredictor` runs on ONNX Runtime with any vocabulary:

- ``image_scorer.onnx``: ``views`` [V, 3, S, S] (RGB, normalised with the backbone's statistics) and
  ``class_embeddings`` [N, D] -> ``scores`` [V, N, out, out] in [0, 1]: :meth:`InferenceProtocol.score_views`, the
  pseudo prompts, the SAM blocks and the class cap included. V and N are dimensions of the graph, not constants.
- ``text_encoder.onnx``: ``tokens`` [S * T, L] (the prompts of S synonyms in T templates, synonym-major) and
  ``synonym_classes`` [N, S] (1 where synonym s belongs to class n) -> ``class_embeddings`` [N, D], unit norm.
- ``tokenizer.json``: the text encoder's tokenizer for HuggingFace ``tokenizers``.
- ``esc_net_export.json``: what a runtime needs besides the graphs (input size, normalisation, prompt templates,
  synonym rule, the inference protocol's settings, the default vocabulary, the exporting commit) and the
  verification of the graphs against PyTorch made at export.

What the export changes, and why it changes no score: the model is built on the CPU with ``CLASS_CHUNK 0`` (the
per-class stages in one piece: chunks are a memory layout, and a loop over chunks would fix the class count of
the graph), and the VLF blocks' Swin attention runs as its explicit softmax rather than PyTorch's fused kernel
(whose decomposition for ONNX fails with the shifted-window mask): the same function, up to float rounding.
"""

import argparse
import json
import logging
import os
import sys
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from detectron2.modeling import build_model
from timm.models.swin_transformer import WindowAttention
from torch import nn

from esc_net.config import add_opts_argument, load_config
from esc_net.data.vocabulary import resolve_vocabularies
from esc_net.modeling.clip import CLIPEncoder
from esc_net.modeling.clip.text_prompts import pool_prompt_embeddings
from esc_net.utils.checkpoint import load_model_weights
from esc_net.utils.provenance import provenance
from esc_net_runtime.predictor import EXPORT_FILES, EXPORT_FORMAT

__all__ = ["EXPORT_FILES", "EXPORT_FORMAT", "ImageScorer", "TextEncoder", "export_model", "main"]

logger = logging.getLogger(__name__)
PROG = "esc-net-export"

# Class counts the export checks its graphs at, besides the one it traces with: on both sides of a class cap.
_EXAMPLE_CLASSES = 3


class ImageScorer(nn.Module):
    """The image side of ESC-Net as one graph: views and class embeddings in, per-class scores out.

    ``forward(views [V, 3, S, S], class_embeddings [N, D]) -> [V, N, out, out]`` in [0, 1], the model's
    :meth:`InferenceProtocol.score_views_traceable` (the sliding windows, passes and merge stay outside: they
    depend on the image, and the runtime does them around the graph).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        return self.model.inference.score_views_traceable(self.model, views, class_embeddings)


class TextEncoder(nn.Module):
    """CLIP's text tower and the pooling of prompts into classes as one graph.

    ``forward(tokens [S * T, L] int64, synonym_classes [N, S]) -> [N, D]`` unit-norm class embeddings, what
    :meth:`CLIPEncoder.encode_text` returns for the names whose prompts were tokenised.
    """

    def __init__(self, backbone: CLIPEncoder):
        super().__init__()
        self.clip = backbone.clip
        self.num_templates = len(backbone.templates)

    def forward(self, tokens: torch.Tensor, synonym_classes: torch.Tensor) -> torch.Tensor:
        return pool_prompt_embeddings(self.clip.encode_text(tokens), synonym_classes, self.num_templates)


def _require_exporter() -> None:
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(
            f"exporting to ONNX needs {' and '.join(missing)} (torch.onnx's exporter): pip install 'esc_net[deploy]'"
        )


def build_export_model(cfg) -> nn.Module:
    """The ESC-Net of ``cfg`` as it is exported: on the CPU, weights loaded strictly, in eval mode, with the two
    changes of the module docstring.

    Raises:
        ValueError: the backbone is not open_clip's CLIP (whose text tower and tokenizer the export knows), or
            MODEL.WEIGHTS does not fit the model.
    """
    cfg = resolve_vocabularies(cfg.clone())
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ESC_NET.CLASS_CHUNK = 0
    cfg.freeze()
    model = build_model(cfg)
    if not isinstance(model.clip, CLIPEncoder):
        raise ValueError(
            f"the export knows open_clip's CLIP (MODEL.ESC_NET.BACKBONE 'CLIPEncoder'): its text tower and tokenizer; "
            f"this config's backbone is {type(model.clip).__name__}"
        )
    if cfg.MODEL.WEIGHTS:
        load_model_weights(model, cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised ESC-Net modules")
    for module in model.modules():
        if isinstance(module, WindowAttention):
            module.fused_attn = False
    return model.eval()


def _export(module: nn.Module, example: tuple, dynamic_shapes: tuple, names: Dict[str, Sequence[str]], path: str):
    """``module`` traced with ``torch.export`` (dimensions named in ``dynamic_shapes`` stay symbolic) and saved as
    ONNX at ``path`` (weights over 2 GB in a file beside it)."""
    with torch.no_grad():
        # Guards that sympy cannot prove for every size (e.g. min(N, cap) != 1 in reshapes) become runtime
        # assertions instead of refusing the dynamic dimension.
        program = torch.export.export(
            module,
            example,
            dynamic_shapes=dynamic_shapes,
            strict=False,
            prefer_deferred_runtime_asserts_over_guards=True,
        )
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False, **names)
    onnx_program.save(path)


def _verify_image_scorer(model: nn.Module, path: str, views: torch.Tensor, class_counts: Sequence[int]) -> Dict:
    """ONNX Runtime's scores against PyTorch's :meth:`InferenceProtocol.score_views` on random class embeddings
    of several counts: the largest absolute difference and the share of pixels whose best class agrees."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    dim = model.clip.output_shape().embed_dim
    worst, agreement = 0.0, 1.0
    for count in class_counts:
        text = torch.nn.functional.normalize(torch.randn(count, dim, generator=generator), dim=-1)
        with torch.no_grad():
            expected = model.inference.score_views(model, views, text).numpy()
        got = session.run(None, {"views": views.numpy(), "class_embeddings": text.numpy()})[0]
        if got.shape != expected.shape:
            raise RuntimeError(
                f"the exported image graph returned {got.shape} for {count} classes, expected {expected.shape}"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
        agreement = min(agreement, float((got.argmax(1) == expected.argmax(1)).mean()))
    return {"class_counts": list(class_counts), "max_abs_diff": worst, "argmax_agreement": agreement}


def export_model(cfg, output_dir: str, verify: bool = True) -> Dict:
    """Exports the ESC-Net of ``cfg`` (weights: ``MODEL.WEIGHTS``) into ``output_dir`` (the files of the module
    docstring; existing ones are replaced).

    Args:
        verify: run the image graph on ONNX Runtime at class counts on both sides of the class cap and compare
            with PyTorch (needs onnxruntime); the result goes into the settings file.
    Returns:
        The settings written to ``esc_net_export.json``.
    Raises:
        ImportError: onnx or onnxscript (or, with ``verify``, onnxruntime) is not installed.
        ValueError: the config cannot be exported (see :func:`build_export_model`), or ``output_dir`` is a file.
    """
    _require_exporter()
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output {output_dir!r} is a file; give a folder (created if missing)")
    started = time.perf_counter()
    model = build_export_model(cfg)
    backbone, protocol = model.clip, model.inference
    os.makedirs(output_dir, exist_ok=True)
    paths = {key: os.path.join(output_dir, name) for key, name in EXPORT_FILES.items()}

    generator = torch.Generator().manual_seed(0)
    size, dim = model.image_size, backbone.output_shape().embed_dim
    views = torch.randn(2, 3, size, size, generator=generator)
    text = torch.nn.functional.normalize(torch.randn(_EXAMPLE_CLASSES, dim, generator=generator), dim=-1)
    logger.info("exporting the image side (%s)", paths["image"])
    _export(
        ImageScorer(model),
        (views, text),
        ({0: torch.export.Dim("views")}, {0: torch.export.Dim("classes")}),
        {"input_names": ["views", "class_embeddings"], "output_names": ["scores"]},
        paths["image"],
    )

    logger.info("exporting the text encoder (%s)", paths["text"])
    num_templates = len(backbone.templates)
    tokens = backbone.tokenizer(["a photo of a thing"] * (2 * num_templates))
    synonym_classes = torch.eye(2)
    synonyms = torch.export.Dim("synonyms")
    prompts = synonyms * num_templates if num_templates > 1 else synonyms  # (torch.export refuses "synonyms * 1")
    _export(
        TextEncoder(backbone),
        (tokens, synonym_classes),
        ({0: prompts}, {0: torch.export.Dim("classes"), 1: synonyms}),
        {"input_names": ["tokens", "synonym_classes"], "output_names": ["class_embeddings"]},
        paths["text"],
    )
    from esc_net_runtime.tokenizer import write_tokenizer

    write_tokenizer(backbone.tokenizer, paths["tokenizer"])

    settings = {
        "format": EXPORT_FORMAT,
        "files": {key: name for key, name in EXPORT_FILES.items() if key != "settings"},
        "image_size": size,
        "out_size": protocol.out_size,
        "embedding_dim": dim,
        "pixel_mean": list(backbone.pixel_mean),
        "pixel_std": list(backbone.pixel_std),
        "context_length": int(tokens.shape[1]),
        "templates": list(backbone.templates),
        "synonym_mode": backbone.synonym_mode,
        "inference": protocol.settings,
        "inference_output": model.inference_output,
        "inference_top_k": model.inference_top_k,
        "vocabulary": model.vocabulary,
        "config": cfg.dump(),
        "provenance": provenance(),
    }
    if verify:
        settings["verification"] = _verify_image_scorer(
            model, paths["image"], views, (1, _EXAMPLE_CLASSES, max(protocol.max_classes_per_view, 4) + 2)
        )
        logger.info("verified against PyTorch: %s", settings["verification"])
    settings["seconds"] = round(time.perf_counter() - started, 1)
    with open(paths["settings"], "w") as f:
        json.dump(settings, f, indent=2)
    return settings


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write the graphs and settings to")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the comparison of the image graph with PyTorch on ONNX Runtime"
    )
    add_opts_argument(parser)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The console entry point: :func:`export_model`, progress at INFO level; what cannot be exported ends the
    process with its message and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        settings = export_model(load_config(args.config_file, args.opts), args.output, verify=not args.no_verify)
    except (ImportError, FileNotFoundError, ValueError) as error:
        sys.exit(f"{PROG}: error: {error}")
    sizes = {name: os.path.getsize(os.path.join(args.output, name)) for name in EXPORT_FILES.values()}
    for name, size in sizes.items():
        print(f"{os.path.join(args.output, name)}  {size / 2**20:.1f} MiB")
    print(f"exported in {settings['seconds']} s")
