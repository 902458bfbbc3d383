"""The ESC-Net meta-architecture, registered in Detectron2's ``META_ARCH_REGISTRY`` as ``"ESCNet"``.

Notation: B images, N classes, S x S the CLIP input size, h x w = S/patch the CLIP grid, D the CLIP joint
embedding width, C the correlation-embedding width.
"""
import contextlib
import logging
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ..data.vocabulary import check_vocabulary, get_dataset_vocabulary
from ..utils.prompt_vis import PromptRecorder, dominant_class, draw_block_prompts
from ..utils.checkpoint import READ_ERRORS, unreadable_weights_error
from .clip import CLIPEncoder
from .criterion import segmentation_loss
from .decoder import CorrelationDecoder
from .esc_block import ESCBlock
from .full_resolution import OUTPUT_MODES, full_resolution_output, resize_bilinear
from .sam_block import load_sam_state, sam_checkpoint_state
from .sliding_window import SlidingWindow

logger = logging.getLogger(__name__)


def _plain_dict(node) -> dict:
    """A config node as nested plain dicts (open_clip's config dataclasses take plain values)."""
    return {k: _plain_dict(v) if isinstance(v, dict) else v for k, v in node.items()}


def _dataset_vocabulary(dataset_names: Sequence[str], role: str) -> Optional[List[str]]:
    """The one vocabulary shared by ``dataset_names`` (None for no dataset)."""
    vocabularies = {tuple(get_dataset_vocabulary(name)) for name in dataset_names}
    if len(vocabularies) > 1:
        raise ValueError(
            f"the {role} datasets {list(dataset_names)} have different vocabularies; ESC-Net trains on one "
            "vocabulary at a time"
        )
    return list(vocabularies.pop()) if vocabularies else None


@META_ARCH_REGISTRY.register()
class ESCNet(nn.Module):
    """ESC-Net: CLIP correlation refined by N ESC-Blocks (pseudo prompts, SAM block, VLF) and an upsampling
    decoder.

    Input: the list of dicts that Detectron2 mappers produce, each with ``"image"`` ([3, H, W], channels in
    ``INPUT.FORMAT``), ``"height"``/``"width"`` (the size to predict at) and, in training, ``"sem_seg"``
    ([H, W] class ids). An input may carry ``"vocabulary"`` (a list of class names) to override the model's
    vocabulary for that call; all inputs of a batch must then carry the same one.

    Output: in training a dict of losses; in inference ``[{"sem_seg": Tensor[N, height, width]}]``, per-class
    scores in [0, 1] for the N names of the vocabulary. With ``INFERENCE_OUTPUT "labels"`` (or an input's
    ``"output": "labels"``, with an optional ``"top_k": k``) instead ``{"sem_seg_labels": [height, width]}`` (and
    ``"sem_seg_topk_labels"``/``"sem_seg_topk_scores"`` [k, height, width]), computed in memory that does not
    grow with the image or the vocabulary (see ``full_resolution.py``).
    """

    @configurable
    def __init__(
        self,
        *,
        clip: CLIPEncoder,
        blocks: Sequence[ESCBlock],
        decoder: CorrelationDecoder,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        train_vocabulary: Optional[Sequence[str]],
        test_vocabulary: Optional[Sequence[str]],
        loss: str = "bce",
        block_loss_weight: float = 0.0,
        ignore_value: int = 255,
        inference_mode: str = "sliding",
        sliding_resize: int = 640,
        sliding_overlap: float = 1.0 / 3.0,
        max_classes_per_view: int = 0,
        view_classes_per_pass: int = 0,
        activation_checkpointing: bool = False,
        sliding_window: int = 0,
        vis_period: int = 0,
        input_format: str = "RGB",
        inference_output: str = "scores",
        inference_top_k: int = 0,
    ):
        """
        Args:
            clip: the CLIP image and text encoders.
            blocks: the ESC-Blocks, applied in order.
            decoder: the upsampling decoder.
            pixel_mean, pixel_std: per-channel normalisation of the input images (0-255 scale).
            train_vocabulary: class names of the training data (None: the model cannot train).
            test_vocabulary: default class names at inference (``set_vocabulary`` changes them).
            loss: "bce" or "ce" (see :func:`segmentation_loss`).
            block_loss_weight: weight of the loss on each ESC-Block's refined correlation map (0 = none).
            ignore_value: label value of pixels without ground truth.
            inference_mode: "sliding" or "whole".
            sliding_resize: side of the square image the sliding windows are cut from.
            sliding_overlap: minimum overlap of neighbouring windows, as a fraction of a window.
            max_classes_per_view: refine at most this many classes per view (top-K by CLIP correlation); the
                others are scored by their plain correlation below every refined class. 0 = no cap.
            view_classes_per_pass: views are refined in passes of at most max(1, this // N) views (N capped by
                ``max_classes_per_view``), which bounds
                inference memory without changing the scores. 0 = one pass.
            activation_checkpointing: in training, recompute the blocks' and the decoder's activations in the
                backward pass instead of storing them.
            sliding_window: side of the sliding windows in pixels of the resized image (0: the CLIP input size).
                Each window is resized to the CLIP input size, so a ViT-L/14 at 336 reads the same 384 windows
                of a 640 image as a ViT-B/16 at 384.
            vis_period: in training, every this many iterations, put one picture per ESC-Block of the first
                image's pseudo prompts (for its most frequent class) into the EventStorage (TensorBoard images
                ``pseudo_prompts/block<i>``). 0 = never.
            input_format: channel order of the input images ("RGB" or "BGR"), for those pictures.
            inference_output: "scores" (per-class scores at full resolution) or "labels" (label map, and top-k
                when ``inference_top_k`` > 0, in bounded memory); an input's "output" / "top_k" override them.
        """
        super().__init__()
        if inference_mode not in ("sliding", "whole"):
            raise ValueError(f"INFERENCE_MODE must be 'sliding' or 'whole', got {inference_mode!r}")
        self.clip = clip
        self.blocks = nn.ModuleList(blocks)
        self.decoder = decoder
        # The first correlation embedding: a 7x7 conv gives each class's map local context before the blocks.
        self.corr_embed = nn.Conv2d(1, blocks[0].hidden_dim, kernel_size=7, padding=3)
        # Block 1 draws its pseudo prompts from raw CLIP cosines (about 0.1-0.35). Their temperature-1 spatial
        # softmax is almost uniform (max/min probability about 1.2 on a 24x24 map), so the "above uniform"
        # threshold kept half the image for every class, present or not. CLIP itself turns cosines into logits
        # with its logit scale (100 for OpenAI CLIP); block 1 does the same with a learnt scale that starts there
        # (log-parametrised, so it stays positive). Later blocks read their own learnt logit maps.
        if blocks[0].use_sam:
            self.prompt_logit_scale = nn.Parameter(clip.clip.logit_scale.detach().clone().float())
            # Only the (differentiable) pseudo mask carries a gradient back to the map the prompts come from.
            self.prompt_logit_scale.requires_grad_("mask" in blocks[0].sam.prompt_types)
        else:
            self.prompt_logit_scale = None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self.train_vocabulary = list(train_vocabulary) if train_vocabulary else None
        self.test_vocabulary = list(test_vocabulary) if test_vocabulary else None
        self.loss = loss
        self.block_loss_weight = block_loss_weight
        self.ignore_value = ignore_value
        self.inference_mode = inference_mode
        self.max_classes_per_view = max_classes_per_view
        self.view_classes_per_pass = view_classes_per_pass
        self.activation_checkpointing = activation_checkpointing
        self.vis_period = vis_period
        self.input_format = input_format
        if inference_output not in OUTPUT_MODES:
            raise ValueError(f"INFERENCE_OUTPUT must be one of {OUTPUT_MODES}, got {inference_output!r}")
        self.inference_output = inference_output
        self.inference_top_k = inference_top_k
        image_size = clip.grid_size[0] * clip.patch_size
        out_size = clip.grid_size[0] * decoder.upscale
        self.image_size = image_size
        self.sliding_window = SlidingWindow(
            sliding_resize, sliding_window or image_size, out_size, sliding_overlap, view_size=image_size
        )

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.ESC_NET
        if m.USE_SAM_BLOCK and "mask" not in m.PROMPT_TYPES and m.NUM_BLOCKS > 1 and m.BLOCK_LOSS_WEIGHT <= 0:
            raise ValueError(
                f"MODEL.ESC_NET.PROMPT_TYPES {list(m.PROMPT_TYPES)} without 'mask' needs "
                "MODEL.ESC_NET.BLOCK_LOSS_WEIGHT > 0: points and boxes are not differentiable, so only deep "
                "supervision can train the map heads that later blocks draw their prompts from"
            )
        clip = CLIPEncoder(
            model_name=m.CLIP_MODEL_NAME,
            pretrained=m.CLIP_PRETRAINED,
            model_cfg=_plain_dict(m.CLIP_MODEL_CFG) or None,
            image_size=m.CLIP_IMAGE_SIZE,
            finetune=m.CLIP_FINETUNE,
            skip_layers=m.CLIP_SKIP_LAYERS,
            templates=m.PROMPT_TEMPLATES,
            synonym_mode=m.SYNONYM_MODE,
        )
        blocks = [
            ESCBlock(
                clip_dim=clip.embed_dim,
                hidden_dim=m.HIDDEN_DIM,
                grid_size=clip.grid_size,
                num_points=m.NUM_POINTS,
                threshold_factor=m.PPG_THRESHOLD_FACTOR,
                kmeans_iters=m.KMEANS_ITERS,
                sam_embed_dim=m.SAM_EMBED_DIM,
                sam_depth=m.SAM_DEPTH,
                sam_mlp_dim=m.SAM_MLP_DIM,
                sam_num_heads=m.SAM_NUM_HEADS,
                num_heads=m.NUM_HEADS,
                window_size=m.WINDOW_SIZE,
                text_guidance_dim=m.TEXT_GUIDANCE_DIM,
                use_sam=m.USE_SAM_BLOCK,
                prompt_types=m.PROMPT_TYPES,
                # A block's refined map is read by the next block's prompt generator and by deep supervision.
                map_head=m.BLOCK_LOSS_WEIGHT > 0 or (m.USE_SAM_BLOCK and i < m.NUM_BLOCKS - 1),
                swin_depth=m.SWIN_DEPTH,
                block_index=i,
                class_chunk=m.CLASS_CHUNK,
            )
            for i in range(m.NUM_BLOCKS)
        ]
        if m.USE_SAM_BLOCK and m.SAM_CHECKPOINT:
            try:
                sam_state = sam_checkpoint_state(m.SAM_CHECKPOINT)  # read the file once for all blocks
            except READ_ERRORS as error:  # name the file of an empty, truncated or code-running checkpoint
                raise unreadable_weights_error(m.SAM_CHECKPOINT, error) from error
            for block in blocks:
                load_sam_state(block.sam, sam_state, m.SAM_CHECKPOINT)
        elif m.USE_SAM_BLOCK and not m.ALLOW_RANDOM_SAM:
            logger.info(
                "MODEL.ESC_NET.SAM_CHECKPOINT is empty: the SAM blocks keep random weights unless MODEL.WEIGHTS "
                "provides them (training refuses to start this way unless MODEL.ESC_NET.ALLOW_RANDOM_SAM is set)"
            )
        decoder = CorrelationDecoder(
            m.HIDDEN_DIM, clip.width, m.DECODER_DIMS, m.DECODER_GUIDANCE_DIMS, class_chunk=m.CLASS_CHUNK
        )
        return {
            "clip": clip,
            "blocks": blocks,
            "decoder": decoder,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "train_vocabulary": _dataset_vocabulary(cfg.DATASETS.TRAIN, "training"),
            "test_vocabulary": _dataset_vocabulary(cfg.DATASETS.TEST[:1], "test"),
            "loss": m.LOSS,
            "block_loss_weight": m.BLOCK_LOSS_WEIGHT,
            "ignore_value": m.IGNORE_VALUE,
            "inference_mode": m.INFERENCE_MODE,
            "sliding_resize": m.SLIDING_RESIZE,
            "sliding_overlap": m.SLIDING_OVERLAP,
            "max_classes_per_view": m.MAX_CLASSES_PER_VIEW,
            "view_classes_per_pass": m.VIEW_CLASSES_PER_PASS,
            "activation_checkpointing": m.ACTIVATION_CHECKPOINTING,
            "sliding_window": m.SLIDING_WINDOW,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
            "inference_output": m.INFERENCE_OUTPUT,
            "inference_top_k": m.INFERENCE_TOP_K,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Sets the class names scored at inference. Names may hold synonyms: "sofa, couch".

        Raises the errors of :func:`check_vocabulary`; warns (UserWarning) about names too long for the text
        encoder's context, whose ends are cut off.
        """
        names = check_vocabulary(class_names)
        truncated = self.clip.truncated_names(names)
        if truncated:
            warnings.warn(
                f"these class names do not fit the text encoder's context once put in a prompt template and are cut "
                f"off (similar long names may get the same embedding): {truncated}",
                stacklevel=2,
            )
        self.test_vocabulary = names

    # ------------------------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        vocabulary = self._vocabulary(batched_inputs)
        if self.training:
            return self._forward_train(batched_inputs, vocabulary)
        return self._forward_inference(batched_inputs, vocabulary)

    def _vocabulary(self, batched_inputs: List[Dict]) -> List[str]:
        given = {tuple(x["vocabulary"]) for x in batched_inputs if "vocabulary" in x}
        if len(given) > 1:
            raise ValueError("the inputs of one batch carry different vocabularies")
        if given:
            return check_vocabulary(given.pop())
        vocabulary = self.train_vocabulary if self.training else self.test_vocabulary
        if vocabulary is None:
            raise ValueError(
                "ESC-Net has no vocabulary: give DATASETS.TRAIN / DATASETS.TEST, call model.set_vocabulary(names), "
                "or pass 'vocabulary' in the inputs"
            )
        return vocabulary

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std

    def _forward_train(self, batched_inputs: List[Dict], vocabulary: List[str]) -> Dict[str, torch.Tensor]:
        if self.max_classes_per_view and len(vocabulary) > self.max_classes_per_view:
            raise ValueError(
                f"the training vocabulary has {len(vocabulary)} classes, more than MODEL.ESC_NET."
                f"MAX_CLASSES_PER_VIEW ({self.max_classes_per_view}), the most classes a view refines at inference; "
                "raise the cap to at least the training vocabulary's size (0 = no cap)"
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
            dense, skips = self.clip.encode_image(images)
            corr = self.correlation(dense, text)
            logits, block_maps = self.refine(corr, dense, skips, text.expand(len(images), -1, -1))
        if recorder is not None:
            self._put_prompt_images(images[0], recorder, vocabulary[recorder.class_index])
        full_size = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        losses = {"loss_sem_seg": segmentation_loss(full_size, targets, self.ignore_value, self.loss)}
        if self.block_loss_weight > 0:
            # Deep supervision of every block's correlation map: the next block's pseudo prompts are drawn from
            # it, and prompt generation is not differentiable, so without this the map would never learn.
            # Computed at the decoder's output resolution to keep its memory small.
            size = logits.shape[-2:]
            small_targets = F.interpolate(targets[:, None].float(), size=size, mode="nearest")[:, 0].long()
            for i, block_map in enumerate(block_maps):
                block_map = F.interpolate(block_map, size=size, mode="bilinear", align_corners=False)
                losses[f"loss_block{i}"] = self.block_loss_weight * segmentation_loss(
                    block_map, small_targets, self.ignore_value, self.loss
                )
        return losses

    def _put_prompt_images(self, image: torch.Tensor, recorder: PromptRecorder, class_name: str) -> None:
        """Puts every block's picture of ``recorder``'s prompts into the EventStorage.

        Args:
            image: [3, S, S] the normalised view the model saw.
        """
        pixels = (image.detach() * self.pixel_std + self.pixel_mean).clamp(0, 255).byte()
        if self.input_format == "BGR":
            pixels = pixels.flip(0)
        view = pixels.permute(1, 2, 0).cpu().numpy()
        storage = get_event_storage()
        for i, record in enumerate(recorder.records):
            if record is None:  # a block without SAM draws no prompts
                continue
            picture = draw_block_prompts(view, record, class_name, f"block {i + 1}, iteration {storage.iter}")
            storage.put_image(f"pseudo_prompts/block{i + 1}", torch.from_numpy(picture).permute(2, 0, 1))

    @torch.no_grad()
    def _forward_inference(self, batched_inputs: List[Dict], vocabulary: List[str]) -> List[Dict]:
        text = self.clip.encode_text(vocabulary)
        if self.inference_mode == "whole":
            size = (self.image_size,) * 2
        else:
            size = (self.sliding_window.size,) * 2
        # resize, then normalise: the same values as the other way round, without a float copy of a large image
        images = torch.stack([self._normalize(resize_bilinear(x["image"], size)) for x in batched_inputs])
        if self.inference_mode == "whole":
            scores = self._score_in_passes(images, text)
        else:
            scores = self.sliding_window.merge(self._score_in_passes(self.sliding_window.views(images), text))
        results = []
        for x, score in zip(batched_inputs, scores):
            height, width = x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1])
            output, top_k = x.get("output", self.inference_output), x.get("top_k", self.inference_top_k)
            results.append(full_resolution_output(score, (height, width), output, top_k))
        return results

    # ------------------------------------------------------------------------------------------------------
    @staticmethod
    def correlation(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every pixel with every class (eq. 1).

        Args:
            dense: [B, D, h, w] CLIP patch embeddings.
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
        """The ESC-Blocks and the decoder.

        Args:
            corr: [B, N, h, w] CLIP correlation; dense: [B, D, h, w]; skips: list of [B, C_clip, h, w];
            text: [B, N, D].
        Returns:
            logits: [B, N, 4h, 4w] (the decoder's upscale).
            block_maps: the refined correlation map of every block that has a map head, [B, N, h, w] each (all
                blocks when deep supervision is on).
        """
        B, N, h, w = corr.shape
        corr_embed = self.corr_embed(corr.reshape(B * N, 1, h, w)).view(B, N, -1, h, w)
        corr_map = self.first_prompt_map(corr)
        block_maps = []
        for block in self.blocks:
            corr_embed, corr_map = self._run(block, corr_embed, corr_map, dense, text)
            if corr_map is not None:
                block_maps.append(corr_map)
        return self._run(self.decoder, corr_embed, skips), block_maps

    def first_prompt_map(self, corr: torch.Tensor) -> Optional[torch.Tensor]:
        """The logit map block 1 draws its pseudo prompts from: the CLIP cosines [B, N, h, w] times the learnt
        logit scale (None without SAM blocks, which need no prompts)."""
        if self.prompt_logit_scale is None:
            return None
        return corr * self.prompt_logit_scale.exp()

    def _run(self, module: nn.Module, *args):
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            # The pseudo-prompt K-means is deterministic, so the recomputation draws the same prompts.
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _score_in_passes(self, views: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """:meth:`score_views` over groups of views sized by ``view_classes_per_pass``."""
        if not self.view_classes_per_pass:
            return self.score_views(views, text)
        refined_classes = min(len(text), self.max_classes_per_view or len(text))  # what a view's memory scales with
        per_pass = max(1, self.view_classes_per_pass // refined_classes)
        return torch.cat([self.score_views(group, text) for group in views.split(per_pass)])

    def score_views(self, views: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Per-class scores of a batch of normalised views.

        Args:
            views: [V, 3, S, S]; text: [N, D].
        Returns:
            [V, N, 4h, 4w] scores in [0, 1].
        """
        dense, skips = self.clip.encode_image(views)
        corr = self.correlation(dense, text)
        V, N = corr.shape[:2]
        K = self.max_classes_per_view
        if not K or N <= K:
            return self.refine(corr, dense, skips, text.expand(V, -1, -1))[0].sigmoid()
        # Refine only the K classes most correlated with each view; the others keep their plain correlation,
        # rescaled below the lowest refined score at each pixel so that they never outrank a refined class.
        top = corr.flatten(2).amax(dim=2).topk(K, dim=1).indices  # [V, K]
        h, w = corr.shape[-2:]
        top_corr = corr.gather(1, top[:, :, None, None].expand(-1, -1, h, w))
        refined = self.refine(top_corr, dense, skips, text[top])[0].sigmoid()  # [V, K, 4h, 4w]
        plain = F.interpolate(corr, size=refined.shape[-2:], mode="bilinear", align_corners=False)
        scores = (plain + 1) / 2 * refined.amin(dim=1, keepdim=True)
        return scores.scatter(1, top[:, :, None, None].expand_as(refined), refined.to(scores.dtype))
