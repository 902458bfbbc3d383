"""Builds an open_clip CLIP at a chosen input size and loads its weights (pretrained tag, local file, or none)."""

import logging
import os
from dataclasses import asdict
from typing import Callable, Mapping, Optional, Sequence, Tuple

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from torch import nn

from esc_net.utils.checkpoint import READ_ERRORS, unreadable_weights_error

__all__ = ["WEIGHT_FILE_SUFFIXES", "build_open_clip", "is_random_init", "load_weights_file", "model_config"]

logger = logging.getLogger(__name__)

WEIGHT_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")
_NO_WEIGHTS = ("", "none")


def is_random_init(pretrained: Optional[str]) -> bool:
    """Whether a ``pretrained`` value of :func:`build_open_clip` leaves CLIP randomly initialised."""
    return (pretrained or "").strip().lower() in _NO_WEIGHTS


def _plain(value):
    """A config value as plain dicts and lists: open_clip tests its nested configs with ``isinstance(x, dict)``,
    which a LazyConfig's DictConfig is not."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def model_config(model_name: str, model_cfg: Optional[Mapping]) -> dict:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg, ...) that :func:`build_open_clip` builds:
    ``model_cfg`` as plain dicts when it is given, else open_clip's own config of ``model_name``.

    Raises:
        ValueError: ``model_cfg`` lacks one of those keys, or open_clip knows no model ``model_name``.
    """
    if model_cfg:
        cfg = _plain(model_cfg)
        missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in cfg]
        if missing:
            raise ValueError(f"CLIP model config {model_name!r} lacks the keys {missing}; got {sorted(cfg)}")
        return cfg
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(
            f"open_clip has no model {model_name!r} (its models: open_clip.list_models()); give MODEL.ESC_NET."
            "CLIP_MODEL_CFG to define one"
        )
    return cfg


def _is_weights_path(pretrained: str) -> bool:
    return pretrained.lower().endswith(WEIGHT_FILE_SUFFIXES) or os.sep in pretrained or os.path.isfile(pretrained)


def load_weights_file(model: nn.Module, path: str, label: str) -> None:
    """Loads an open_clip state dict file (.safetensors, or a torch-saved .bin/.pt/.pth) into ``model`` through
    open_clip's ``load_checkpoint`` (which also interpolates the positional embeddings to the model's grid and
    context length), with ``weights_only=True``. Raises ValueError naming the file and every missing / unexpected
    key when it does not fit or has another suffix (.npy, .npz, ...), and UnreadableCheckpointError (a ValueError)
    naming the file when it is empty, truncated, or asks to run code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP weights file not found: {path}")
    if not path.lower().endswith(WEIGHT_FILE_SUFFIXES):
        # open_clip would read a .npy/.npz as big_vision (JAX) weights, which only its SigLIP towers take, and fail
        # deep inside with an AttributeError.
        raise ValueError(
            f"CLIP weights file {path}: expected an open_clip state dict saved as {', '.join(WEIGHT_FILE_SUFFIXES)}"
        )
    try:
        incompatible = open_clip.load_checkpoint(model, path, strict=False, weights_only=True)
    except READ_ERRORS as error:
        if isinstance(error, RuntimeError) and "loading state_dict" in str(error):
            # shape mismatches: torch raises even with strict=False
            raise ValueError(f"CLIP weights file {path} does not fit the open_clip model {label!r}: {error}") from error
        raise unreadable_weights_error(path, error) from error
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise ValueError(
            f"CLIP weights file {path} does not fit the open_clip model {label!r} (an open_clip CLIP state dict is "
            f"expected). Missing keys: {sorted(incompatible.missing_keys)}. "
            f"Unexpected keys: {sorted(incompatible.unexpected_keys)}."
        )
    logger.info("Loaded CLIP weights for %s from %s", label, path)


def build_open_clip(
    model_name: str, pretrained: Optional[str], model_cfg: Optional[dict], image_size: int, load_weights: bool = True
) -> Tuple[nn.Module, Callable, dict]:
    """Creates the open_clip model for ``image_size`` x ``image_size`` inputs.

    Args:
        model_name: an open_clip model name (used when ``model_cfg`` is empty), otherwise a label for messages.
        pretrained: an open_clip pretrained tag, a weights file path, or "none" / "" / None for random weights.
        model_cfg: an open_clip model config (embed_dim, vision_cfg, text_cfg), built with ``open_clip.CLIP``, or
            with ``open_clip.CustomTextCLIP`` when it sets ``custom_text`` (the form of SigLIP-style models, whose
            text tower is a module of its own).
        image_size: square input size; the model is built for it and loaded positional embeddings are interpolated
            to its grid by open_clip. Patch dropout is disabled, since dense prediction needs every patch token.
        load_weights: False builds the model ``pretrained`` describes without reading its weights (no download, no
            file read), for a caller whose weights come from elsewhere (an ESC-Net checkpoint): a tag still gives
            its image statistics and activation.

    A pretrained tag's activation is used whatever the model name says: OpenAI's CLIP weights were trained with
    QuickGELU, and open_clip only warns when "ViT-B-16" (GELU) is given the "openai" tag.

    Returns:
        (model, tokenizer, preprocess config dict with "mean" / "std" in the 0-1 scale).
    """
    pretrained = (pretrained or "").strip()
    from_file = not is_random_init(pretrained) and _is_weights_path(pretrained)
    if model_cfg:
        if not is_random_init(pretrained) and not from_file:
            raise ValueError(
                f"CLIP pretrained={pretrained!r} looks like an open_clip pretrained tag, but tags need a named model "
                "and an explicit model config was given; use a local weights file path or 'none'"
            )
        cfg = model_config(model_name, model_cfg)
        cfg["vision_cfg"] = {**cfg["vision_cfg"], "image_size": image_size, "patch_dropout": 0.0}
        model_class = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
        model = model_class(**cfg)
        tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
        preprocess = asdict(PreprocessCfg())
    else:
        use_tag = not is_random_init(pretrained) and not from_file
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if use_tag else {}
        if use_tag and not tag_cfg:
            raise ValueError(
                f"CLIP pretrained={pretrained!r} is neither a local weights file nor a pretrained tag of the open_clip "
                f"model {model_name!r} (its tags: {open_clip.list_pretrained_tags_by_model(model_name)})"
            )
        try:
            model = open_clip.create_model(
                model_name,
                pretrained=pretrained if use_tag and load_weights else None,
                force_image_size=image_size,
                force_patch_dropout=0.0,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                # without the weights, the tag's image statistics all the same
                force_preprocess_cfg=None if load_weights else tag_cfg,
                pretrained_text=False,
                # where torch creates tensors now (the CPU, or the meta device for a model built only for its
                # shapes), not open_clip's default move to the CPU
                device=torch.get_default_device(),
            )
        except RuntimeError as error:
            if not use_tag:
                raise
            raise RuntimeError(
                f"Could not get the open_clip weights {model_name!r} / {pretrained!r}: {error}. Without network "
                "access, download them elsewhere and give the local file path as the pretrained value."
            ) from error
        tokenizer = open_clip.get_tokenizer(model_name)
        preprocess = model.visual.preprocess_cfg
    if from_file and load_weights:
        load_weights_file(model, pretrained, model_name)
    # A random CLIP is not warned about here: the model's weights usually load next (ESCNet.from_config knows).
    return model, tokenizer, preprocess
