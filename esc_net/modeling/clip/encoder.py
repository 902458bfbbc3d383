"""open_clip's CLIP as ESC-Net's vision-language backbone: dense image features and class text embeddings."""

import logging
from collections import OrderedDict
from itertools import chain
from typing import Hashable, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn
from torch.nn import functional as F

from esc_net.modeling.backbone import VL_BACKBONE_REGISTRY, BackboneShape, VisionLanguageBackbone
from esc_net.modeling.clip.build import build_open_clip, is_random_init, model_config
from esc_net.modeling.clip.qv_attention import split_qkv_attention
from esc_net.modeling.clip.text_prompts import (
    SYNONYM_MODES,
    build_prompts,
    check_templates,
    pool_prompt_embeddings,
    synonym_class_matrix,
)
from esc_net.utils.arguments import check_choice
from esc_net_runtime.prompts import truncated_names

__all__ = ["CLIPEncoder", "DENSE_LAYERS", "FINETUNE_MODES"]

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("attention", "attention_with_bias", "full", "frozen")
# How the last image block makes the dense features (see CLIPEncoder): "attention" runs it as it is; "value" is the
# dense last layer of CAT-Seg's CLIP, which reads each position through the value and output projections only.
DENSE_LAYERS = ("attention", "value")
# CLIP tensors outside both towers; they take no part in encode_text.
_NON_TEXT_TENSORS = ("logit_scale", "logit_bias")


class _LRUCache:
    """A few recent results, the least recently used one dropped first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: "OrderedDict[Hashable, Tensor]" = OrderedDict()

    def get(self, key: Hashable) -> Optional[Tensor]:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Tensor) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


@VL_BACKBONE_REGISTRY.register()
class CLIPEncoder(VisionLanguageBackbone):
    """open_clip's CLIP as ESC-Net's backbone: dense image features and class text embeddings, from any open_clip
    CLIP with a ViT image tower (``open_clip.CLIP``, or ``CustomTextCLIP`` for SigLIP-style text towers).

    Fine-tuning modes (``finetune``):
        "attention": only the query and value projection weights of every attention layer of the image and text
            towers are trainable, as CAT-Seg fine-tunes CLIP (its q/v biases stay in the frozen packed bias). The key
            projections are buffers (see :class:`SplitQKVAttention`) and every other tensor has
            ``requires_grad=False``, so they stay bit-identical under any optimizer.
        "attention_with_bias": the same with the q and v biases trainable too.
        "full": every CLIP tensor is trainable. "frozen": none is.
    The state dict is open_clip's CLIP state dict under the prefix ``clip.`` in every mode.

    Dense features (``dense_layer``): CLIP is trained to pool its last block into one image embedding, and that
    block's global attention mixes every position into every other.
        "attention": the last block as CLIP runs it; each position's token, through ``ln_post`` and ``proj``.
        "value": CAT-Seg's dense last layer. Each position x_i of the last block's input goes through the value and
            output projections only (no mixing between positions), the class token's input x_cls is the residual,
            then the block's MLP: y_i = x_cls + out_proj(v_proj(ln_1(x_i))); z_i = y_i + mlp(ln_2(y_i)); then
            ``ln_post`` and ``proj``. The last block's query and key projections take no part, so they are frozen.

    Attributes:
        clip: the open_clip model.
        image_size: the side of the square input.
        pixel_mean, pixel_std: 3-tuples in the 0-255 RGB scale (open_clip's preprocessing of the model).
    """

    @configurable
    def __init__(
        self,
        *,
        model_name: str,
        pretrained: str,
        model_cfg: Optional[dict],
        image_size: int,
        finetune: str,
        skip_layers: Sequence[int],
        templates: Sequence[str],
        synonym_mode: str,
        dense_layer: str,
        load_pretrained: bool = True,
        text_batch_size: int = 512,
        text_cache_size: int = 4,
    ):
        """
        Args:
            model_name: an open_clip model name (used when ``model_cfg`` is empty, otherwise only a label).
            pretrained: an open_clip pretrained tag (needs the network or open_clip's cache), a local open_clip
                state dict file (.bin / .pt / .pth / .safetensors), or "none" / "" for random weights.
            model_cfg: an open_clip model config dict (embed_dim, vision_cfg, text_cfg; see
                :func:`~esc_net.modeling.clip.build.build_open_clip`); the text uses open_clip's SimpleTokenizer
                with the config's context length.
            image_size: square input size; positional embeddings are interpolated to image_size // patch_size.
            finetune: one of FINETUNE_MODES (see the class docstring).
            skip_layers: 0-based indices of image transformer blocks whose patch tokens feed the decoder.
            templates: prompt templates with one "{}"; several templates are ensembled.
            synonym_mode: "first" or "average" (see :mod:`esc_net.modeling.clip.text_prompts`).
            dense_layer: "attention" or "value" (see the class docstring).
            load_pretrained: False builds the CLIP that ``pretrained`` describes without reading its weights (they
                come from a checkpoint of the whole model); see :func:`~esc_net.modeling.clip.build.build_open_clip`.
            text_batch_size: prompts per text-tower forward; larger vocabularies are encoded in chunks.
            text_cache_size: how many vocabularies' text embeddings are kept (see :meth:`encode_text`).
        """
        super().__init__()
        check_choice("MODEL.ESC_NET.CLIP_FINETUNE", finetune, FINETUNE_MODES)
        check_choice("MODEL.ESC_NET.CLIP_DENSE_LAYER", dense_layer, DENSE_LAYERS)
        check_choice("MODEL.ESC_NET.SYNONYM_MODE", synonym_mode, SYNONYM_MODES)
        if text_batch_size < 1:
            raise ValueError(f"text_batch_size must be positive, got {text_batch_size}")
        self.model_name = model_name
        self.templates = check_templates(templates)
        self.synonym_mode = synonym_mode
        self.text_batch_size = text_batch_size
        self.finetune = finetune
        self.dense_layer = dense_layer

        clip, self.tokenizer, preprocess = build_open_clip(
            model_name, pretrained, model_cfg, image_size, load_pretrained
        )
        visual = clip.visual
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise ValueError(
                f"CLIP {model_name!r}: dense features need open_clip's VisionTransformer image tower without "
                f"attentional pooling; got {type(visual).__name__}"
            )
        patch_h, patch_w = visual.patch_size
        if patch_h != patch_w or image_size % patch_h != 0:
            raise ValueError(
                f"CLIP {model_name!r}: image_size {image_size} must be a multiple of the square patch size "
                f"{visual.patch_size}"
            )
        num_layers = len(visual.transformer.resblocks)
        self.skip_layers = tuple(int(index) for index in skip_layers)
        bad = [index for index in self.skip_layers if not 0 <= index < num_layers]
        if bad:
            raise ValueError(
                f"CLIP {model_name!r} has image blocks 0..{num_layers - 1}; skip_layers {bad} are out of range"
            )
        # Blocks whose tokens encode_image takes, in block order: the skip layers and the last one, or, for the
        # "value" dense layer, the one before the last (whose output is the last block's input).
        dense_source = num_layers - 1 if dense_layer == "attention" else num_layers - 2
        if dense_source < 0:
            raise ValueError(f"CLIP {model_name!r}: the 'value' dense layer needs at least two image blocks")
        self._taken_layers = sorted(set(self.skip_layers) | {dense_source})
        self._skip_positions = [self._taken_layers.index(index) for index in self.skip_layers]
        self._dense_position = self._taken_layers.index(dense_source)

        attention = split_qkv_attention(clip, trainable_k=finetune == "full")
        packed_left = [name for name, _ in clip.named_parameters() if name.endswith("in_proj_weight")]
        if packed_left:
            raise ValueError(
                f"CLIP {model_name!r} has attention layers that are not nn.MultiheadAttention ({packed_left}); "
                "only open_clip's standard residual attention blocks are supported"
            )
        clip.requires_grad_(finetune == "full")
        # The contrastive logit scale/bias take no part in dense prediction; frozen, so that no parameter goes
        # without a gradient (DistributedDataParallel requires that).
        for name in _NON_TEXT_TENSORS:
            if getattr(clip, name, None) is not None:
                getattr(clip, name).requires_grad_(False)
        if finetune.startswith("attention"):
            kinds = ("weight", "bias") if finetune == "attention_with_bias" else ("weight",)
            for module in attention:
                for parameter in module.qv_parameters(kinds):
                    parameter.requires_grad_(True)
        if dense_layer == "value":
            # The last image block reads no query or key: they cannot change the output, so nothing trains them.
            last = visual.transformer.resblocks[-1].attn
            for name in ("q_weight", "q_bias", "k_weight", "k_bias"):
                getattr(last, name).requires_grad_(False)
        self.clip = clip

        self.image_size = image_size
        self._shape = BackboneShape(
            embed_dim=visual.proj.shape[1],
            width=visual.transformer.width,
            patch_size=patch_h,
            grid_size=(image_size // patch_h, image_size // patch_h),
            num_skips=len(self.skip_layers),
        )
        self.pixel_mean = tuple(255.0 * value for value in preprocess["mean"])
        self.pixel_std = tuple(255.0 * value for value in preprocess["std"])
        self._text_cache = _LRUCache(text_cache_size)
        trainable = sum(p.numel() for p in clip.parameters() if p.requires_grad)
        logger.info(
            "CLIP %s at %dx%d (grid %s), fine-tuning %r: %d trainable parameters",
            model_name,
            image_size,
            image_size,
            self._shape.grid_size,
            finetune,
            trainable,
        )
        # Only true when no weights will load: a checkpoint of the whole model (MODEL.WEIGHTS) holds CLIP's tensors.
        if load_pretrained and is_random_init(pretrained):
            logger.warning(
                f"CLIP {model_name} is randomly initialised (MODEL.ESC_NET.CLIP_PRETRAINED {pretrained!r}) and "
                "MODEL.WEIGHTS is empty"
            )

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.ESC_NET
        return {
            "model_name": m.CLIP_MODEL_NAME,
            "pretrained": m.CLIP_PRETRAINED,
            "model_cfg": m.CLIP_MODEL_CFG or None,
            "image_size": m.CLIP_IMAGE_SIZE,
            "finetune": m.CLIP_FINETUNE,
            "skip_layers": m.CLIP_SKIP_LAYERS,
            "templates": m.PROMPT_TEMPLATES,
            "synonym_mode": m.SYNONYM_MODE,
            "dense_layer": m.CLIP_DENSE_LAYER,
            # MODEL.WEIGHTS holds every tensor, CLIP's included: the CLIP weights are then not read (an offline
            # machine evaluating a checkpoint needs no CLIP download)
            "load_pretrained": not cfg.MODEL.WEIGHTS,
        }

    @classmethod
    def output_shape_of(
        cls,
        *,
        model_name: str,
        model_cfg: Optional[dict],
        image_size: int,
        skip_layers: Sequence[int],
        **other_arguments,
    ) -> BackboneShape:
        """The :meth:`output_shape` of the CLIPEncoder these arguments build, read from the open_clip model config
        without building the model (LazyConfig files derive the other modules' sizes from it)."""
        config = model_config(model_name, model_cfg)
        patch = config["vision_cfg"]["patch_size"]
        return BackboneShape(
            embed_dim=config["embed_dim"],
            width=config["vision_cfg"]["width"],
            patch_size=patch,
            grid_size=(image_size // patch, image_size // patch),
            num_skips=len(skip_layers),
        )

    def output_shape(self) -> BackboneShape:
        return self._shape

    @property
    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale

    @property
    def image_tower(self) -> nn.Module:
        return self.clip.visual

    def _to_map(self, tokens: Tensor) -> Tensor:
        """[B, h*w, C] patch tokens -> [B, C, h, w]."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self._shape.grid_size)

    def encode_image(self, images: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """
        Args:
            images: [B, 3, image_size, image_size], normalised with pixel_mean / pixel_std.
        Returns:
            dense: [B, D, h, w], the dense layer's patch tokens (see ``dense_layer``) through ln_post and the
                projection (not L2-normalised).
            skips: one [B, C_clip, h, w] per skip layer (that block's output patch tokens), in skip_layers order.
        """
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"CLIPEncoder.encode_image expects images of shape [B, {', '.join(map(str, expected))}], "
                f"got {list(images.shape)}"
            )
        visual = self.clip.visual
        taken = visual.forward_intermediates(
            images, indices=self._taken_layers, intermediates_only=True, output_fmt="NLC", output_extra_tokens=True
        )
        tokens = taken["image_intermediates"]  # [B, h*w, C_clip] per taken block, class token removed
        dense = tokens[self._dense_position]
        if self.dense_layer == "value":
            dense = self._value_layer(dense, taken["image_intermediates_prefix"][self._dense_position])
        dense = visual.ln_post(dense) @ visual.proj
        return self._to_map(dense), [self._to_map(tokens[position]) for position in self._skip_positions]

    def _value_layer(self, patches: Tensor, class_token: Tensor) -> Tensor:
        """CAT-Seg's dense last layer (class docstring) on the last block's input: patches [B, h*w, C_clip] and
        class_token [B, 1, C_clip] -> [B, h*w, C_clip]."""
        block = self.clip.visual.transformer.resblocks[-1]
        attn = block.attn
        values = attn.out_proj(F.linear(block.ln_1(patches), attn.v_weight, attn.v_bias))
        x = class_token + block.ls_1(values)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def _text_tensors(self) -> List[Tensor]:
        """Every parameter and buffer the text tower's output depends on."""
        named = chain(self.clip.named_parameters(), self.clip.named_buffers())
        return [t for name, t in named if not name.startswith("visual.") and name not in _NON_TEXT_TENSORS]

    def _compute_text(self, class_names: Sequence[str]) -> Tensor:
        prompts, synonym_to_class = build_prompts(class_names, self.templates, self.synonym_mode)
        device = self.clip.logit_scale.device
        tokens = self.tokenizer(prompts).to(device)  # [S * T, context_length]
        embeddings = torch.cat([self.clip.encode_text(chunk) for chunk in tokens.split(self.text_batch_size)])
        synonym_classes = synonym_class_matrix(synonym_to_class.to(device), len(class_names))
        return pool_prompt_embeddings(embeddings, synonym_classes, len(self.templates))

    def truncated_names(self, class_names: Sequence[str]) -> List[str]:
        """The names of which some prompt fills the text context (:func:`esc_net_runtime.prompts.truncated_names`)."""
        return truncated_names(class_names, self.templates, self.tokenizer)

    def encode_text(self, class_names: Sequence[str]) -> Tensor:
        """
        Args:
            class_names: N names; "a, b" lists synonyms (handled per ``synonym_mode``).
        Returns:
            [N, D] L2-normalised class embeddings (template ensembles averaged, see ``text_prompts``).

        When no gradient can flow into the text tower (grad mode off, or no text parameter trainable), results are
        cached, keyed by the names, templates, synonym mode, autocast state and the version and storage of every
        text-tower tensor, so that any in-place update (optimizer step, load_state_dict) or vocabulary change gives
        fresh results. A fresh copy of the cached tensor is returned.
        """
        tensors = self._text_tensors()
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return self._compute_text(class_names)
        names = tuple(class_names)
        fingerprint = tuple((t.data_ptr(), t._version) for t in tensors)
        device_type = tensors[0].device.type
        # Under autocast the text tower computes in another precision; such results are kept apart.
        autocast = torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type)
        key = (names, self.templates, self.synonym_mode, autocast, fingerprint)
        embeddings = self._text_cache.get(key)
        if embeddings is None:
            with torch.no_grad():
                embeddings = self._compute_text(names)
            self._text_cache.put(key, embeddings)
        # A copy, so that the caller cannot alter the cache in place; made outside inference mode it is also an
        # ordinary tensor that autograd may save.
        return embeddings.clone()

    def clear_text_cache(self) -> None:
        """Forgets every cached vocabulary, so that the next :meth:`encode_text` runs the text tower."""
        self._text_cache.clear()

    def _apply(self, fn, *args, **kwargs):
        # .to() / .half() / .cuda() replace every tensor; a later allocation could reuse an old address with the
        # same version counter, so the cache is dropped rather than trusted to miss.
        self.clear_text_cache()
        return super()._apply(fn, *args, **kwargs)
