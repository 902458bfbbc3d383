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

from esc_net.config import check_config
from esc_net.data.vocabulary import default_vocabulary_source, resolve_vocabulary, shared_vocabulary
from esc_net.modeling.clip import CLIPEncoder
from esc_net.modeling.clip.build import is_random_init
from esc_net.modeling.criterion import esc_net_losses
from esc_net.modeling.decoder import CorrelationDecoder
from esc_net.modeling.esc_block import ESCBlock, build_esc_blocks
from esc_net.modeling.full_resolution import OUTPUT_MODES, full_resolution_output, resize_bilinear
from esc_net.modeling.inference import InferenceProtocol
from esc_net.modeling.sam_projection import ProjectionAnchor, read_projection_weights
from esc_net.utils.prompt_vis import PromptRecorder, dominant_class, draw_block_prompts
from esc_net.utils.vocabulary_rules import check_vocabulary

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class ESCNet(nn.Module):
    """ESC-Net: CLIP correlation refined by N ESC-Blocks (pseudo prompts, SAM block, VLF) and an upsampling
    decoder.

    Input: the list of dicts that Detectron2 mappers produce, each with ``"image"`` ([3, H, W], channels in
    ``INPUT.FORMAT``, any size: the model resizes it to its views), optionally ``"height"``/``"width"`` (the
    size to predict at; default the image's), in training ``"sem_seg"`` ([H, W] ids into the vocabulary), and
    optionally ``"vocabulary"``, the class names to score (the same list for every input of a batch;
    :class:`SemanticSegmentationMapper` attaches its dataset's, ``ESCNetPredictor`` its own). An input without
    one is scored against the model's default, :attr:`vocabulary` (:attr:`train_vocabulary` in training),
    resolved when the model is built (``MODEL.ESC_NET.VOCABULARY``), so Detectron2's own tools
    (``DefaultPredictor``, the stock ``DatasetMapper``) feed it unchanged. The model reads no dataset catalog.

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
        inference: InferenceProtocol,
        loss: str = "bce",
        block_loss_weight: float = 0.0,
        ignore_value: int = 255,
        activation_checkpointing: bool = False,
        vis_period: int = 0,
        input_format: str = "RGB",
        inference_output: str = "scores",
        inference_top_k: int = 0,
        vocabulary: Optional[Sequence[str]] = None,
        train_vocabulary: Optional[Sequence[str]] = None,
        projection_anchor: Optional[ProjectionAnchor] = None,
        align_loss_weight: float = 0.0,
    ):
        """
        Args:
            clip: the CLIP image and text encoders; its image normalisation (``clip.pixel_mean/pixel_std``, the
                CLIP model's own) is the model's.
            blocks: the ESC-Blocks, applied in order.
            decoder: the upsampling decoder.
            inference: views, class cap, passes and merge at inference (see ``inference.py``).
            loss: "bce" or "ce" (see :func:`esc_net.modeling.criterion.segmentation_loss`).
            block_loss_weight: weight of the loss on each ESC-Block's refined correlation map (0 = none).
            ignore_value: label value of pixels without ground truth.
            activation_checkpointing: in training, recompute the blocks' and the decoder's activations in the
                backward pass instead of storing them.
            vis_period: in training, every this many iterations, put one picture per ESC-Block of the first
                image's pseudo prompts (for its most frequent class) into the EventStorage (TensorBoard images
                ``pseudo_prompts/block<i>``). 0 = never.
            input_format: channel order of the input images ("RGB" or "BGR"); CLIP reads RGB.
            inference_output: "scores" (per-class scores at full resolution) or "labels" (label map, and top-k
                when ``inference_top_k`` > 0, in bounded memory); an input's "output" / "top_k" override them.
            vocabulary: the class names scored at inference for inputs that carry none (None: such inputs are
                refused).
            train_vocabulary: the same in training; training labels are ids into it (None: refused).
            projection_anchor, align_loss_weight: in training, ``align_loss_weight`` times the mean over the SAM
                blocks of the anchor's alignment term (``loss_sam_align``; see ``sam_projection.py``).
        """
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {input_format!r}")
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
        # One source for the normalisation: the CLIP model's own statistics (RGB, 0-255 scale).
        self.register_buffer("pixel_mean", torch.tensor(clip.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(clip.pixel_std).view(-1, 1, 1), persistent=False)
        self.inference = inference
        self.loss = loss
        self.block_loss_weight = block_loss_weight
        self.ignore_value = ignore_value
        self.activation_checkpointing = activation_checkpointing
        self.vis_period = vis_period
        self.input_format = input_format
        if inference_output not in OUTPUT_MODES:
            raise ValueError(f"INFERENCE_OUTPUT must be one of {OUTPUT_MODES}, got {inference_output!r}")
        self.inference_output = inference_output
        self.inference_top_k = inference_top_k
        if align_loss_weight > 0 and (projection_anchor is None or not blocks[0].use_sam):
            raise ValueError("an alignment loss needs SAM blocks and the aligned projection's anchor")
        self.projection_anchor = projection_anchor if align_loss_weight > 0 else None
        self.align_loss_weight = align_loss_weight
        # plain attributes, not state: a checkpoint loads into a model with any default vocabulary
        self.vocabulary = check_vocabulary(vocabulary) if vocabulary is not None else None
        self.train_vocabulary = check_vocabulary(train_vocabulary) if train_vocabulary is not None else None
        self.image_size = clip.grid_size[0] * clip.patch_size
        if inference.image_size != self.image_size:
            raise ValueError(
                f"the inference protocol's views are {inference.image_size} pixels, the CLIP input is {self.image_size}"
            )
        out_size = clip.grid_size[0] * decoder.upscale
        if inference.out_size != out_size:
            raise ValueError(
                f"the inference protocol's score maps are {inference.out_size} pixels, the decoder's are {out_size}"
            )

    @classmethod
    def from_config(cls, cfg):
        check_config(cfg)
        m = cfg.MODEL.ESC_NET
        clip = CLIPEncoder(
            model_name=m.CLIP_MODEL_NAME,
            pretrained=m.CLIP_PRETRAINED,
            model_cfg=m.CLIP_MODEL_CFG or None,
            image_size=m.CLIP_IMAGE_SIZE,
            finetune=m.CLIP_FINETUNE,
            skip_layers=m.CLIP_SKIP_LAYERS,
            templates=m.PROMPT_TEMPLATES,
            synonym_mode=m.SYNONYM_MODE,
            dense_layer=m.CLIP_DENSE_LAYER,
            # MODEL.WEIGHTS holds every tensor, CLIP's and SAM's included: the part files are then not read (an
            # offline machine evaluating a checkpoint needs no CLIP download, and no SAM file)
            load_pretrained=not cfg.MODEL.WEIGHTS,
        )
        blocks = build_esc_blocks(
            m.NUM_BLOCKS,
            deep_supervision=m.BLOCK_LOSS_WEIGHT > 0,
            sam_checkpoint="" if cfg.MODEL.WEIGHTS else m.SAM_CHECKPOINT,
            sam_projection_weights="" if cfg.MODEL.WEIGHTS else m.SAM_PROJECTION_WEIGHTS,
            use_sam=m.USE_SAM_BLOCK,
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
            prompt_types=m.PROMPT_TYPES,
            image_projection=m.SAM_IMAGE_PROJECTION,
            mask_mode=m.PSEUDO_MASK,
            swin_depth=m.SWIN_DEPTH,
            class_chunk=m.CLASS_CHUNK,
            class_pad=m.CLASS_ATTENTION_PAD,
            reference=m.IMPLEMENTATION == "reference",
        )
        # Only true when no weights will be loaded: MODEL.WEIGHTS holds every tensor, CLIP's and SAM's included.
        if not cfg.MODEL.WEIGHTS and is_random_init(m.CLIP_PRETRAINED):
            logger.warning(
                f"CLIP {m.CLIP_MODEL_NAME} is randomly initialised (MODEL.ESC_NET.CLIP_PRETRAINED "
                f"{m.CLIP_PRETRAINED!r}) and MODEL.WEIGHTS is empty"
            )
        if not cfg.MODEL.WEIGHTS and m.USE_SAM_BLOCK and not m.SAM_CHECKPOINT and not m.ALLOW_RANDOM_SAM:
            logger.info(
                "MODEL.ESC_NET.SAM_CHECKPOINT and MODEL.WEIGHTS are empty: the SAM blocks keep random weights "
                "(training refuses to start this way unless MODEL.ESC_NET.ALLOW_RANDOM_SAM is set)"
            )
        decoder = CorrelationDecoder(
            m.HIDDEN_DIM,
            clip.width,
            m.DECODER_DIMS,
            m.DECODER_GUIDANCE_DIMS,
            class_chunk=m.CLASS_CHUNK,
            reference=m.IMPLEMENTATION == "reference",
        )
        inference = InferenceProtocol(
            mode=m.INFERENCE_MODE,
            image_size=m.CLIP_IMAGE_SIZE,
            out_size=clip.grid_size[0] * decoder.upscale,
            sliding_resize=m.SLIDING_RESIZE,
            sliding_window=m.SLIDING_WINDOW,
            sliding_overlap=m.SLIDING_OVERLAP,
            max_classes_per_view=m.MAX_CLASSES_PER_VIEW,
            view_classes_per_pass=m.VIEW_CLASSES_PER_PASS,
        )
        return {
            "clip": clip,
            "blocks": blocks,
            "decoder": decoder,
            "inference": inference,
            "loss": m.LOSS,
            "block_loss_weight": m.BLOCK_LOSS_WEIGHT,
            "ignore_value": m.IGNORE_VALUE,
            "activation_checkpointing": m.ACTIVATION_CHECKPOINTING,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
            "inference_output": m.INFERENCE_OUTPUT,
            "inference_top_k": m.INFERENCE_TOP_K,
            # the aligned weights are the anchor even when MODEL.WEIGHTS gives the projection's current ones
            "projection_anchor": (
                ProjectionAnchor(read_projection_weights(m.SAM_PROJECTION_WEIGHTS))
                if m.SAM_ALIGN_LOSS_WEIGHT > 0
                else None
            ),
            "align_loss_weight": m.SAM_ALIGN_LOSS_WEIGHT,
            **cls._default_vocabularies(cfg),
        }

    @staticmethod
    def _default_vocabularies(cfg) -> Dict[str, Optional[List[str]]]:
        """``vocabulary`` from MODEL.ESC_NET.VOCABULARY, else DATASETS.TEST[0]; ``train_vocabulary`` from
        DATASETS.TRAIN (see esc_net/config.py). Raises KeyError naming the key of an unregistered dataset."""
        source, key = default_vocabulary_source(cfg)
        try:
            vocabulary = resolve_vocabulary(source) if source else None
            key = "DATASETS.TRAIN"
            train_vocabulary = shared_vocabulary(cfg.DATASETS.TRAIN)
        except KeyError as error:
            raise KeyError(f"{key}: {error.args[0]}") from error
        return {"vocabulary": vocabulary, "train_vocabulary": train_vocabulary}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def check_vocabulary(self, class_names: Sequence[str]) -> List[str]:
        """The validated, stripped class names of a vocabulary (names may hold synonyms: "sofa, couch").

        Raises the errors of :func:`esc_net.utils.vocabulary_rules.check_vocabulary`; warns (UserWarning) about
        names too long for this model's text encoder, whose ends are cut off.
        """
        names = check_vocabulary(class_names)
        truncated = self.clip.truncated_names(names)
        if truncated:
            warnings.warn(
                f"these class names do not fit the text encoder's context once put in a prompt template and are cut "
                f"off (similar long names may get the same embedding): {truncated}",
                stacklevel=2,
            )
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
            source = "DATASETS.TRAIN" if self.training else "MODEL.ESC_NET.VOCABULARY or DATASETS.TEST"
            raise ValueError(
                "an input carries no 'vocabulary' (the list of class names to score) and the model has no default "
                f"one: give each input its 'vocabulary', or build the model from a config whose {source} names "
                "the classes (a list of names or a registered dataset)"
            )
        first = vocabularies[0]
        names = check_vocabulary(first)
        # a mapper attaches one list object to every input: compare contents only when the objects differ
        if any(v is not first and list(v) != list(first) for v in vocabularies[1:]):
            raise ValueError("the inputs of one batch carry different vocabularies")
        return names

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        """[3, H, W] in INPUT.FORMAT, 0-255 -> [3, H, W] float32 RGB, normalised with CLIP's statistics."""
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
            dense, skips = self.clip.encode_image(images)
            corr = self.correlation(dense, text)
            logits, block_maps = self.refine(corr, dense, skips, text.expand(len(images), -1, -1))
        if recorder is not None:
            self._put_prompt_images(images[0], recorder, vocabulary[recorder.class_index])
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

    def _put_prompt_images(self, image: torch.Tensor, recorder: PromptRecorder, class_name: str) -> None:
        """Puts every block's picture of ``recorder``'s prompts into the EventStorage.

        Args:
            image: [3, S, S] the normalised view the model saw.
        """
        pixels = (image.detach() * self.pixel_std + self.pixel_mean).clamp(0, 255).byte()  # RGB
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
            # by name: hooks (the prompt pictures' PromptRecorder) read the map as corr_map
            corr_embed, corr_map = self._run(block, corr_embed, corr_map=corr_map, image_feats=dense, text=text)
            if corr_map is not None:
                block_maps.append(corr_map)
        return self._run(self.decoder, corr_embed, skips), block_maps

    def first_prompt_map(self, corr: torch.Tensor) -> Optional[torch.Tensor]:
        """The logit map block 1 draws its pseudo prompts from: the CLIP cosines [B, N, h, w] times the learnt
        logit scale (None without SAM blocks, which need no prompts)."""
        if self.prompt_logit_scale is None:
            return None
        return corr * self.prompt_logit_scale.exp()

    def _run(self, module: nn.Module, *args, **kwargs):
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            # The pseudo-prompt K-means is deterministic, so the recomputation draws the same prompts.
            return checkpoint(module, *args, use_reentrant=False, **kwargs)
        return module(*args, **kwargs)
