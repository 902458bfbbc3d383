"""The ESC-Net meta-architecture, registered in Detectron2's ``META_ARCH_REGISTRY`` as ``"ESCNet"``.

Notation: B images, N classes, S x S the backbone's input size, h x w = S/patch its grid, D the joint embedding
width, C the correlation-embedding width.
"""

import contextlib
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import LazyCall as L
from detectron2.config import configurable, instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from esc_net.modeling.backbone import VisionLanguageBackbone, vl_backbone_class
from esc_net.modeling.criterion import LOSSES, esc_net_losses
from esc_net.modeling.decoder import CorrelationDecoder
from esc_net.modeling.esc_block import ESCBlock, build_esc_blocks
from esc_net.modeling.full_resolution import OUTPUT_MODES, full_resolution_output, resize_bilinear
from esc_net.modeling.inference import InferenceProtocol
from esc_net.modeling.sam_projection import ProjectionAnchor, read_projection_weights
from esc_net.utils.arguments import check_choice, check_minimum
from esc_net.utils.prompt_vis import PromptRecorder, dominant_class, put_prompt_pictures
from esc_net_runtime.prompts import warn_truncated_names
from esc_net_runtime.vocabulary_rules import check_vocabulary

__all__ = ["IMPLEMENTATIONS", "ESCNet"]

logger = logging.getLogger(__name__)

# The values of MODEL.ESC_NET.IMPLEMENTATION: the ESC-Blocks' and the decoder's forward_fast or forward_reference.
IMPLEMENTATIONS = ("fast", "reference")


@META_ARCH_REGISTRY.register()
class ESCNet(nn.Module):
    """ESC-Net: the backbone's correlation refined by N ESC-Blocks (pseudo prompts, SAM block, VLF) and an
    upsampling decoder.

    Input: the list of dicts that Detectron2 mappers produce, each with ``"image"`` ([3, H, W], channels in
    ``INPUT.FORMAT``, any size: the model resizes it to its views), optionally ``"height"``/``"width"`` (the
    size to predict at; default the image's), in training ``"sem_seg"`` ([H, W] ids into the vocabulary), and
    optionally ``"vocabulary"``, the class names to score (the same list for every input of a batch;
    :class:`SemanticSegmentationMapper` attaches its dataset's, ``ESCNetPredictor`` its own). An input without
    one is scored against the model's default, :attr:`vocabulary` (:attr:`train_vocabulary` in training): class
    names handed to the model when it is built (``MODEL.ESC_NET.VOCABULARY`` / ``TRAIN_VOCABULARY``, which
    :func:`esc_net.data.resolve_vocabularies` fills from the config's datasets). The model reads no dataset
    catalog.

    Output: in training a dict of losses; in inference ``[{"sem_seg": Tensor[N, height, width]}]``, per-class
    scores in [0, 1] for the N names of the vocabulary. With ``INFERENCE_OUTPUT "labels"`` (or an input's
    ``"output": "labels"``, with an optional ``"top_k": k``) instead ``{"sem_seg_labels": [height, width]}`` (and
    ``"sem_seg_topk_labels"``/``"sem_seg_topk_scores"`` [k, height, width]), computed in memory that does not
    grow with the image or the vocabulary (see ``full_resolution.py``).

    Built from a config, every part reads its own keys (its ``from_config``), through :meth:`lazy_call`: the same
    LazyCall tree that the LazyConfig files (``configs/*.py``) instantiate.
    """

    @configurable
    def __init__(
        self,
        *,
        clip: VisionLanguageBackbone,
        blocks: Sequence[ESCBlock],
        decoder: CorrelationDecoder,
        inference: InferenceProtocol,
        loss: str,
        block_loss_weight: float,
        ignore_value: int,
        activation_checkpointing: bool,
        vis_period: int,
        input_format: str,
        inference_output: str,
        inference_top_k: int,
        implementation: str,
        vocabulary: Optional[Sequence[str]],
        train_vocabulary: Optional[Sequence[str]],
        projection_anchor: Optional[ProjectionAnchor],
        align_loss_weight: float,
    ):
        """
        Args:
            clip: the vision-language backbone (:class:`VisionLanguageBackbone`; open_clip's CLIP by default,
                whence the name, which the checkpoints' keys keep); its image normalisation is the model's.
            blocks: the ESC-Blocks, applied in order.
            decoder: the upsampling decoder.
            inference: views, class cap, passes and merge at inference (see ``inference.py``); its geometry is set
                here, from the backbone and the decoder.
            loss: "bce" or "ce" (see :func:`esc_net.modeling.criterion.segmentation_loss`).
            block_loss_weight: weight of the loss on each ESC-Block's refined correlation map (0 = none).
            ignore_value: label value of pixels without ground truth.
            activation_checkpointing: in training, recompute the blocks' and the decoder's activations in the
                backward pass instead of storing them.
            vis_period: in training, every this many iterations, put one picture per ESC-Block of the first
                image's pseudo prompts (for its most frequent class) into the EventStorage (TensorBoard images
                ``pseudo_prompts/block<i>``). 0 = never.
            input_format: channel order of the input images ("RGB" or "BGR"); the backbone reads RGB.
            inference_output: "scores" (per-class scores at full resolution) or "labels" (label map, and top-k
                when ``inference_top_k`` > 0, in bounded memory); an input's "output" / "top_k" override them.
            implementation: "fast" or "reference": which form of the ESC-Blocks and the decoder runs (the same
                function; see :class:`ESCBlock`).
            vocabulary: the class names scored at inference for inputs that carry none (None: such inputs are
                refused).
            train_vocabulary: the same in training; training labels are ids into it (None: refused).
            projection_anchor, align_loss_weight: in training, ``align_loss_weight`` times the mean over the SAM
                blocks of the anchor's alignment term (``loss_sam_align``; see ``sam_projection.py``).
        """
        super().__init__()
        check_choice("INPUT.FORMAT", input_format, ("RGB", "BGR"))
        check_choice("MODEL.ESC_NET.LOSS", loss, LOSSES)
        check_choice("MODEL.ESC_NET.INFERENCE_OUTPUT", inference_output, OUTPUT_MODES)
        check_choice("MODEL.ESC_NET.IMPLEMENTATION", implementation, IMPLEMENTATIONS)
        if block_loss_weight > 0 and any(block.map_head is None for block in blocks):
            raise ValueError(
                "BLOCK_LOSS_WEIGHT > 0 supervises every block's map: build the blocks with "
                "deep_supervision=True (build_esc_blocks)"
            )
        if (
            blocks[0].use_sam
            and "mask" not in blocks[0].sam.prompt_types
            and len(blocks) > 1
            and block_loss_weight <= 0
        ):
            raise ValueError(
                f"MODEL.ESC_NET.PROMPT_TYPES {list(blocks[0].sam.prompt_types)} without 'mask' needs "
                "MODEL.ESC_NET.BLOCK_LOSS_WEIGHT > 0: points and boxes are not differentiable, so only deep "
                "supervision can train the map heads that later blocks draw their prompts from"
            )
        shape = clip.output_shape()
        built_for = {"the decoder": decoder.input_shape}
        built_for.update({f"ESC-Block {i}": block.vlf.input_shape for i, block in enumerate(blocks)})
        for part, part_shape in built_for.items():
            if part_shape != shape:
                raise ValueError(f"{part} was built for a backbone of {part_shape}, the backbone's is {shape}")
        self.clip = clip
        self.blocks = nn.ModuleList(blocks)
        self.decoder = decoder
        # The first correlation embedding: a 7x7 conv gives each class's map local context before the blocks.
        self.corr_embed = nn.Conv2d(1, blocks[0].hidden_dim, kernel_size=7, padding=3)
        # Block 1 draws its pseudo prompts from raw CLIP cosines (about 0.1-0.35). Their temperature-1 spatial
        # softmax is almost uniform (max/min probability about 1.2 on a 24x24 map), so the "above uniform"
        # threshold would keep half the image for every class, present or not. CLIP itself turns cosines into
        # logits with its logit scale (100 for OpenAI CLIP); block 1 does the same with a learnt scale that starts
        # there (log-parametrised, so it stays positive). Later blocks read their own learnt logit maps.
        if blocks[0].use_sam:
            self.prompt_logit_scale = nn.Parameter(clip.logit_scale.detach().clone().float())
            # Only the (differentiable) pseudo mask carries a gradient back to the map the prompts come from.
            self.prompt_logit_scale.requires_grad_("mask" in blocks[0].sam.prompt_types)
        else:
            self.prompt_logit_scale = None
        # One source for the normalisation: the backbone's own statistics (RGB, 0-255 scale).
        self.register_buffer("pixel_mean", torch.tensor(clip.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(clip.pixel_std).view(-1, 1, 1), persistent=False)
        self.image_size = shape.image_size
        self.inference = _with_geometry(inference, self.image_size, shape.grid_size[0] * decoder.upscale)
        self.loss = loss
        self.block_loss_weight = block_loss_weight
        self.ignore_value = ignore_value
        self.activation_checkpointing = activation_checkpointing
        self.vis_period = vis_period
        self.input_format = input_format
        self.inference_output = inference_output
        self.inference_top_k = inference_top_k
        self.implementation = implementation
        check_minimum("MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT", align_loss_weight, 0)
        if align_loss_weight > 0 and (projection_anchor is None or not blocks[0].use_sam):
            raise ValueError(
                "MODEL.ESC_NET.SAM_ALIGN_LOSS_WEIGHT > 0 keeps the SAM blocks' projection at its aligned weights: it "
                "needs MODEL.ESC_NET.USE_SAM_BLOCK True and MODEL.ESC_NET.SAM_PROJECTION_WEIGHTS (written by "
                "`esc-net-pretrain align`)"
            )
        self.projection_anchor = projection_anchor if align_loss_weight > 0 else None
        self.align_loss_weight = align_loss_weight
        # plain attributes, not state: a checkpoint loads into a model with any default vocabulary
        self.vocabulary = check_vocabulary(vocabulary) if vocabulary is not None else None
        self.train_vocabulary = check_vocabulary(train_vocabulary) if train_vocabulary is not None else None

    @classmethod
    def from_config(cls, cfg):
        node = cls.lazy_call(cfg)
        # in the tree's order: the backbone, the blocks, then the decoder draw their random initialisations
        return {key: instantiate(node[key]) for key in node if key != "_target_"}

    @classmethod
    def lazy_call(cls, cfg) -> DictConfig:
        """ESC-Net as Detectron2's ``LazyCall`` of its parts, each with the arguments its ``from_config`` reads from
        ``cfg``: ``instantiate(ESCNet.lazy_call(cfg))`` builds the model ``ESCNet(cfg)`` builds (which is how
        ``ESCNet(cfg)`` builds it), and the LazyConfig files start from it.

        The sizes the blocks and the decoder are built for (their ``input_shape``) are the backbone's
        ``output_shape_of`` its own arguments, and the decoder's width and class chunk are the blocks': change an
        argument of the backbone or of the blocks, and the other parts follow.
        """
        m = cfg.MODEL.ESC_NET
        backbone = vl_backbone_class(m.BACKBONE)
        backbone_args = backbone.from_config(cfg)
        # interpolations from model.blocks.input_shape (and model.decoder.input_shape) to model.clip
        shape = L(backbone.output_shape_of)(**{key: f"${{...clip.{key}}}" for key in backbone_args})
        return L(cls)(
            clip=L(backbone)(**backbone_args),
            blocks=L(build_esc_blocks)(**build_esc_blocks.from_config(cfg, shape)),
            decoder=L(CorrelationDecoder)(
                **{
                    **CorrelationDecoder.from_config(cfg),
                    "input_shape": shape,
                    "hidden_dim": "${..blocks.hidden_dim}",
                    "class_chunk": "${..blocks.class_chunk}",
                }
            ),
            inference=L(InferenceProtocol)(**InferenceProtocol.from_config(cfg)),
            loss=m.LOSS,
            block_loss_weight=m.BLOCK_LOSS_WEIGHT,
            ignore_value=m.IGNORE_VALUE,
            activation_checkpointing=m.ACTIVATION_CHECKPOINTING,
            vis_period=cfg.VIS_PERIOD,
            input_format=cfg.INPUT.FORMAT,
            inference_output=m.INFERENCE_OUTPUT,
            inference_top_k=m.INFERENCE_TOP_K,
            implementation=m.IMPLEMENTATION,
            vocabulary=_names("MODEL.ESC_NET.VOCABULARY", m.VOCABULARY),
            train_vocabulary=_names("MODEL.ESC_NET.TRAIN_VOCABULARY", m.TRAIN_VOCABULARY),
            # the aligned weights are the anchor even when MODEL.WEIGHTS gives the projection's current ones
            projection_anchor=(
                L(ProjectionAnchor)(state=L(read_projection_weights)(path=m.SAM_PROJECTION_WEIGHTS))
                if m.SAM_ALIGN_LOSS_WEIGHT > 0 and m.USE_SAM_BLOCK and m.SAM_PROJECTION_WEIGHTS
                else None
            ),
            align_loss_weight=m.SAM_ALIGN_LOSS_WEIGHT,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def check_vocabulary(self, class_names: Sequence[str]) -> List[str]:
        """The validated, stripped class names of a vocabulary (names may hold synonyms: "sofa, couch").

        Raises the errors of :func:`esc_net_runtime.vocabulary_rules.check_vocabulary`; warns (UserWarning) about
        names too long for this model's text encoder, whose ends are cut off.
        """
        names = check_vocabulary(class_names)
        warn_truncated_names(self.clip.truncated_names(names), stacklevel=2)
        return names

    # ------------------------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        vocabulary = self._vocabulary(batched_inputs)
        if self.training:
            return self._forward_train(batched_inputs, vocabulary)
        return self._forward_inference(batched_inputs, vocabulary)

    def _vocabulary(self, batched_inputs: List[Dict]) -> List[str]:
        """The class names of the batch: the inputs' own "vocabulary", else the model's default."""
        default = self.train_vocabulary if self.training else self.vocabulary
        vocabularies = [x.get("vocabulary", default) for x in batched_inputs]
        if any(v is None for v in vocabularies):
            key = "TRAIN_VOCABULARY (or DATASETS.TRAIN)" if self.training else "VOCABULARY (or DATASETS.TEST)"
            raise ValueError(
                "an input carries no 'vocabulary' (the list of class names to score) and the model has no default "
                f"one: give each input its 'vocabulary', or build the model from a config whose MODEL.ESC_NET.{key} "
                "names the classes, resolved into names by esc_net.data.resolve_vocabularies(cfg) (train_net.py "
                "and ESCNetPredictor do it)"
            )
        first = vocabularies[0]
        names = check_vocabulary(first)
        # a mapper attaches one list object to every input: compare contents only when the objects differ
        if any(v is not first and list(v) != list(first) for v in vocabularies[1:]):
            raise ValueError("the inputs of one batch carry different vocabularies")
        return names

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        """[3, H, W] in INPUT.FORMAT, 0-255 -> [3, H, W] float32 RGB, normalised with the backbone's statistics."""
        image = image.to(self.device, torch.float32)
        if self.input_format == "BGR":
            image = image.flip(0)
        return (image - self.pixel_mean) / self.pixel_std

    def _forward_train(self, batched_inputs: List[Dict], vocabulary: List[str]) -> Dict[str, torch.Tensor]:
        cap = self.inference.max_classes_per_view
        if cap and len(vocabulary) > cap:
            raise ValueError(
                f"the training vocabulary has {len(vocabulary)} classes, more than MODEL.ESC_NET."
                f"MAX_CLASSES_PER_VIEW ({cap}), the most classes a view refines at inference; "
                "raise the cap to at least the training vocabulary's size (0 = no cap)"
            )
        pad = self.blocks[0].vlf.text_guidance.pad_to
        if pad and len(vocabulary) >= pad:
            raise ValueError(
                f"MODEL.ESC_NET.CLASS_ATTENTION_PAD ({pad}) must be larger than the training vocabulary "
                f"({len(vocabulary)} classes) or 0: the padding tokens would take no part in training"
            )
        images = ImageList.from_tensors([self._normalize(x["image"]) for x in batched_inputs]).tensor
        targets = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs], pad_value=self.ignore_value
        ).tensor.long()
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        recorder = None
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            drawn_class = dominant_class(targets[0], len(vocabulary), self.ignore_value)
            recorder = PromptRecorder(self.blocks, image_index=0, class_index=drawn_class)
        with recorder or contextlib.nullcontext():
            text = self.clip.encode_text(vocabulary)
            dense, skips = self.encode_image(images)
            corr = self.correlation(dense, text)
            logits, block_maps = self.refine(corr, dense, skips, text.expand(len(images), -1, -1))
        if recorder is not None:
            view = (images[0].detach() * self.pixel_std + self.pixel_mean).clamp(0, 255).byte()  # RGB
            put_prompt_pictures(view.permute(1, 2, 0).cpu().numpy(), recorder, vocabulary[recorder.class_index])
        losses = esc_net_losses(
            logits,
            block_maps,
            targets,
            ignore_value=self.ignore_value,
            kind=self.loss,
            block_loss_weight=self.block_loss_weight,
        )
        if self.projection_anchor is not None:
            terms = [self.projection_anchor.loss(block.sam.image_proj, dense) for block in self.blocks]
            losses["loss_sam_align"] = self.align_loss_weight * torch.stack(terms).mean()
        return losses

    @torch.no_grad()
    def _forward_inference(self, batched_inputs: List[Dict], vocabulary: List[str]) -> List[Dict]:
        text = self.clip.encode_text(vocabulary)
        size = (self.inference.input_size,) * 2
        # resize, then normalise: the same values as the other way round, without a float copy of a large image
        images = torch.stack([self._normalize(resize_bilinear(x["image"], size)) for x in batched_inputs])
        scores = self.inference.score(self, images, text)
        results = []
        for x, score in zip(batched_inputs, scores):
            height, width = x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1])
            output, top_k = x.get("output", self.inference_output), x.get("top_k", self.inference_top_k)
            results.append(full_resolution_output(score, (height, width), output, top_k))
        return results

    # ------------------------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The backbone's dense features [B, D, h, w] and skip features of normalised views [B, 3, S, S]."""
        return self.clip.encode_image(images)

    @staticmethod
    def correlation(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every pixel with every class (eq. 1).

        Args:
            dense: [B, D, h, w] dense image features.
            text: [N, D] or [B, N, D] unit-norm class embeddings.
        Returns:
            [B, N, h, w].
        """
        dense = F.normalize(dense, dim=1)
        if text.dim() == 2:
            return torch.einsum("bdhw,nd->bnhw", dense, text)
        return torch.einsum("bdhw,bnd->bnhw", dense, text)

    def refine(
        self, corr: torch.Tensor, dense: torch.Tensor, skips: List[torch.Tensor], text: torch.Tensor
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The ESC-Blocks and the decoder, in the form ``implementation`` names.

        Args:
            corr: [B, N, h, w] correlation; dense: [B, D, h, w]; skips: list of [B, C_clip, h, w];
            text: [B, N, D].
        Returns:
            logits: [B, N, 4h, 4w] (the decoder's upscale).
            block_maps: the refined correlation map of every block that has a map head, [B, N, h, w] each (all
                blocks when deep supervision is on).
        """
        reference = self.implementation == "reference"
        B, N, h, w = corr.shape
        corr_embed = self.corr_embed(corr.reshape(B * N, 1, h, w)).view(B, N, -1, h, w)
        corr_map = self.first_prompt_map(corr)
        block_maps = []
        for block in self.blocks:
            # by name: hooks (the prompt pictures' PromptRecorder) read the map as corr_map
            corr_embed, corr_map = self._run(
                block, corr_embed, corr_map=corr_map, image_feats=dense, text=text, reference=reference
            )
            if corr_map is not None:
                block_maps.append(corr_map)
        return self._run(self.decoder, corr_embed, skips, reference=reference), block_maps

    def first_prompt_map(self, corr: torch.Tensor) -> Optional[torch.Tensor]:
        """The logit map block 1 draws its pseudo prompts from: the cosines [B, N, h, w] times the learnt
        logit scale (None without SAM blocks, which need no prompts)."""
        if self.prompt_logit_scale is None:
            return None
        return corr * self.prompt_logit_scale.exp()

    def _run(self, module: nn.Module, *args, **kwargs):
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            # The pseudo-prompt K-means is deterministic, so the recomputation draws the same prompts.
            return checkpoint(module, *args, use_reentrant=False, **kwargs)
        return module(*args, **kwargs)


def _names(key: str, value) -> Optional[List[str]]:
    """A vocabulary key's class names (None: no default). A dataset's name is resolved where the config is read
    (:func:`esc_net.data.resolve_vocabularies`), not by the model."""
    if isinstance(value, str):
        raise ValueError(
            f"{key} is {value!r}, a dataset's name: the model takes class names. Resolve the config's vocabularies "
            "first with esc_net.data.resolve_vocabularies(cfg) (train_net.py and ESCNetPredictor do), or list the "
            "names"
        )
    return None if value is None else list(value)


def _with_geometry(inference: InferenceProtocol, image_size: int, out_size: int) -> InferenceProtocol:
    """``inference`` with the model's view and score sizes; a protocol built for other sizes is refused."""
    for name, size in (("image_size", image_size), ("out_size", out_size)):
        given = getattr(inference, name)
        if given is not None and given != size:
            raise ValueError(f"the inference protocol's {name} is {given}, the model's {size}")
    return inference.replace(image_size=image_size, out_size=out_size)
