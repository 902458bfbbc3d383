"""One ESC-Block: pseudo prompts -> SAM block -> feature merge -> Vision-Language Fusion, and the stack of them.

Notation: B images, N classes, h x w the CLIP grid, D the CLIP joint-embedding width, C the correlation-embedding
width (``HIDDEN_DIM``), E the SAM transformer width.
"""

import logging
from typing import List, Optional, Tuple

import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from esc_net.modeling.backbone import BackboneShape
from esc_net.modeling.class_chunks import class_chunks
from esc_net.modeling.prompt_generator import PseudoPromptGenerator
from esc_net.modeling.sam_block import SAMBlock
from esc_net.modeling.sam_checkpoint import load_sam_state, sam_checkpoint_state
from esc_net.modeling.sam_projection import load_projection_weights, read_projection_weights
from esc_net.modeling.vlf_block import VisionLanguageFusion
from esc_net.utils.arguments import check_minimum
from esc_net.utils.checkpoint import READ_ERRORS, unreadable_weights_error

__all__ = ["ESCBlock", "build_esc_blocks"]

logger = logging.getLogger(__name__)


class ESCBlock(nn.Module):
    """Refines the correlation embedding of every class once, from its parts:

    1. ``prompt_generator`` (:class:`PseudoPromptGenerator`) turns each class's current correlation map into N_o
       points and a mask.
    2. ``sam`` (:class:`SAMBlock`: SAM's prompt encoder and two-way transformer, CLIP features as the image
       embedding) gives class-specific image features (F_v^n)'.
    3. Merge: F_v'^n = conv1x1([F_v ; (F_v^n)']), computed as the sum of ``merge_clip`` (a conv of F_v, once per
       image) and ``merge_sam`` (a conv of (F_v^n)', per class): the same function without materialising N copies of
       the D-channel CLIP features.
    4. ``vlf`` (:class:`VisionLanguageFusion`) refines the correlation embedding with F_v'^n (image guidance) and the
       text embeddings (text guidance); ``map_head``, a 1x1 conv, reads the refined correlation map that the next
       block's prompts come from.

    :meth:`forward_reference` is these steps in order on all classes at once; :meth:`forward_fast` computes the
    same function with the image side formed once per image and the classes in chunks of ``class_chunk`` on the CPU
    (see :func:`class_chunks`). The model chooses between them (``MODEL.ESC_NET.IMPLEMENTATION``).

    Without ``sam`` (and ``prompt_generator``), steps 1-2 are skipped and the VLF block is guided by the plain CLIP
    features, F_v'^n = conv1x1(F_v) for every class (the paper's "w/o SAM" ablation). Without ``map_head`` the block
    returns no map: the last block's map is only needed for deep supervision, and a head that nothing reads would get
    no gradient.
    """

    def __init__(
        self,
        *,
        prompt_generator: Optional[PseudoPromptGenerator],
        sam: Optional[SAMBlock],
        merge_sam: Optional[nn.Conv2d],
        merge_clip: nn.Conv2d,
        vlf: VisionLanguageFusion,
        map_head: Optional[nn.Conv2d],
        class_chunk: int,
    ):
        """
        Args:
            prompt_generator, sam, merge_sam: steps 1-3 of the class docstring, all None for a block without SAM.
            merge_clip, vlf, map_head: see the class docstring (``map_head`` may be None).
            class_chunk: classes per chunk of :meth:`forward_fast` on the CPU (0: all at once).
        """
        super().__init__()
        if (sam is None) != (prompt_generator is None) or (sam is None) != (merge_sam is None):
            raise ValueError("an ESC-Block takes a prompt generator, a SAM block and its merge together, or none")
        check_minimum("MODEL.ESC_NET.CLASS_CHUNK", class_chunk, 0)
        self.hidden_dim = vlf.hidden_dim
        # whether the forward runs steps 1-3; an inference-time knockout may turn them off on a block that has them
        # (esc_net/evaluation/knockouts.py)
        self.use_sam = sam is not None
        # the attribute order is the parameters' (and a checkpoint's) order
        if sam is not None:
            self.prompt_generator = prompt_generator
            self.sam = sam
            self.merge_sam = merge_sam
        self.merge_clip = merge_clip
        self.vlf = vlf
        self.map_head = map_head
        self.class_chunk = class_chunk
        # checkpoints written before the head was named map_head keep loading
        self._register_load_state_dict_pre_hook(_rename_corr_head)

    def forward(
        self,
        corr_embed: torch.Tensor,
        corr_map: Optional[torch.Tensor],
        image_feats: torch.Tensor,
        text: torch.Tensor,
        reference: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            corr_embed: [B, N, C, h, w] correlation embedding.
            corr_map: [B, N, h, w] the current correlation (logit) map the pseudo prompts are drawn from (unused,
                and may be None, without the SAM block).
            image_feats: [B, D, h, w] dense CLIP features F_v.
            text: [B, N, D] class text embeddings.
            reference: run :meth:`forward_reference` instead of :meth:`forward_fast`.

        Returns:
            corr_embed: [B, N, C, h, w] refined correlation embedding.
            corr_map: [B, N, h, w] refined correlation map, or None for a block built without a map head.
        """
        if reference:
            return self.forward_reference(corr_embed, corr_map, image_feats, text)
        return self.forward_fast(corr_embed, corr_map, image_feats, text)

    def forward_reference(self, corr_embed, corr_map, image_feats, text):
        """The block as the paper describes it, on all classes at once (arguments and results as :meth:`forward`).
        Change the method here first; tests/test_esc_block.py then says where :meth:`forward_fast` must follow."""
        self.vlf.check_inputs(corr_embed, text)
        clip_guidance = self.merge_clip(image_feats).unsqueeze(1)  # [B, 1, C, h, w]
        if self.use_sam:
            prompts = self.prompt_generator(corr_map)  # 1. pseudo points and masks
            sam_feats = self.sam(image_feats, text, *prompts, reference=True)  # 2. (F_v^n)', [B*N, E, h, w]
            guidance = self._merge(sam_feats, clip_guidance)  # 3. F_v'^n
        else:
            guidance = F.gelu(clip_guidance).expand(-1, corr_embed.shape[1], -1, -1, -1)
        corr_embed = self.vlf(corr_embed, guidance, text)  # 4. image guidance, then text guidance
        return corr_embed, self._read_map(corr_embed)

    def forward_fast(self, corr_embed, corr_map, image_feats, text):
        """:meth:`forward_reference` computed faster, the same function
        (tests/test_esc_block.py::test_fast_path_equals_the_reference): what depends only on the image (SAM's image
        side, the CLIP half of the merge) is formed once; steps 1-3 and the VLF block's image guidance run one chunk
        of classes at a time, keeping the correlation embedding channels-last; the text guidance then attends across
        the chunks (:meth:`TextGuidance.forward`). Arguments and results as :meth:`forward`."""
        self.vlf.check_inputs(corr_embed, text)
        B, N, C, h, w = corr_embed.shape
        clip_guidance = self.merge_clip(image_feats).unsqueeze(1)  # [B, 1, C, h, w], shared by the classes
        if self.use_sam:
            sam_image_side = self.sam.image_side(image_feats)
            posterior = self.prompt_generator.class_posterior(corr_map)  # over the whole vocabulary
        else:
            shared = F.gelu(clip_guidance)
        guides = self.vlf.text_guidance.guides(text)  # [B, N, 1, T']
        spatial = []
        for classes in class_chunks(N, self.class_chunk, corr_embed.device):
            n = classes.stop - classes.start
            if self.use_sam:
                prompts = self.prompt_generator(
                    corr_map[:, classes], None if posterior is None else posterior[:, classes]
                )
                sam_feats = self.sam(image_feats, text[:, classes], *prompts, image_side=sam_image_side)
                guidance = self._merge(sam_feats, clip_guidance)
            else:
                guidance = shared.expand(B, n, C, h, w)
            corr = corr_embed[:, classes].permute(0, 1, 3, 4, 2).flatten(0, 1)  # [B*n, h, w, C], a view if stored so
            x = self.vlf.image_guidance(corr, guidance.permute(0, 1, 3, 4, 2).flatten(0, 1))
            spatial.append(x.reshape(B, n, h * w, C))
        refined = self.vlf.text_guidance(spatial, guides)
        # channels-last storage, [B, N, C, h, w] view: the next block reads its chunks and the map head convolves
        # them without a copy
        corr_embed = torch.cat([x.unflatten(2, (h, w)) for x in refined], dim=1).permute(0, 1, 4, 2, 3)
        return corr_embed, self._read_map(corr_embed)

    def _merge(self, sam_feats: torch.Tensor, clip_guidance: torch.Tensor) -> torch.Tensor:
        """F_v'^n [B, n, C, h, w] from (F_v^n)' [B*n, E, h, w] and the CLIP half [B, 1, C, h, w]."""
        return F.gelu(self.merge_sam(sam_feats).unflatten(0, (clip_guidance.shape[0], -1)) + clip_guidance)

    def _read_map(self, corr_embed: torch.Tensor) -> Optional[torch.Tensor]:
        """The refined correlation map [B, N, h, w] (None without a map head)."""
        if self.map_head is None:
            return None
        B, N, _, h, w = corr_embed.shape
        return self.map_head(corr_embed.flatten(0, 1)).view(B, N, h, w)


def _rename_corr_head(state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "corr_head.")]:
        state_dict[prefix + "map_head." + key[len(prefix + "corr_head.") :]] = state_dict.pop(key)


def _blocks_from_config(cfg, input_shape: BackboneShape):
    m = cfg.MODEL.ESC_NET
    sam_checkpoint = "" if cfg.MODEL.WEIGHTS else m.SAM_CHECKPOINT
    if not cfg.MODEL.WEIGHTS and m.USE_SAM_BLOCK and not m.SAM_CHECKPOINT and not m.ALLOW_RANDOM_SAM:
        logger.info(
            "MODEL.ESC_NET.SAM_CHECKPOINT and MODEL.WEIGHTS are empty: the SAM blocks keep random weights "
            "(training refuses to start this way unless MODEL.ESC_NET.ALLOW_RANDOM_SAM is set)"
        )
    return {
        "input_shape": input_shape,
        "num_blocks": m.NUM_BLOCKS,
        "hidden_dim": m.HIDDEN_DIM,
        "deep_supervision": m.BLOCK_LOSS_WEIGHT > 0,
        "class_chunk": m.CLASS_CHUNK,
        "prompts": PseudoPromptGenerator.from_config(cfg) if m.USE_SAM_BLOCK else None,
        "sam": SAMBlock.from_config(cfg) if m.USE_SAM_BLOCK else None,
        # MODEL.WEIGHTS holds every tensor, SAM's included: the SAM file is then not read
        "sam_checkpoint": sam_checkpoint,
        "sam_projection_weights": "" if cfg.MODEL.WEIGHTS else m.SAM_PROJECTION_WEIGHTS,
        "vlf": VisionLanguageFusion.from_config(cfg),
    }


# the flat arguments of build_esc_blocks up to version 3, and where each one is now
_MOVED_ARGUMENTS = {
    **{key: f"prompts.{key}" for key in ("num_points", "threshold_factor", "kmeans_iters", "mask_mode")},
    **{f"sam_{key}": f"sam.{key}" for key in ("embed_dim", "depth", "mlp_dim", "num_heads")},
    **{key: f"sam.{key}" for key in ("prompt_types", "image_projection")},
    **{key: f"vlf.{key}" for key in ("num_heads", "window_size", "text_guidance_dim", "swin_depth")},
    "class_pad": "vlf.class_pad",
    "clip_dim": "input_shape (derived from the backbone's arguments)",
    "grid_size": "input_shape (derived from the backbone's arguments)",
    "use_sam": "prompts and sam (None for both: blocks without SAM)",
    "reference": "the model's implementation (MODEL.ESC_NET.IMPLEMENTATION)",
}


@configurable(from_config=_blocks_from_config)
def build_esc_blocks(
    *,
    input_shape: BackboneShape,
    num_blocks: int,
    hidden_dim: int,
    deep_supervision: bool,
    class_chunk: int,
    prompts: Optional[dict],
    sam: Optional[dict],
    sam_checkpoint: str,
    sam_projection_weights: str,
    vlf: dict,
    **former,
) -> List[ESCBlock]:
    """The ``num_blocks`` consecutive ESC-Blocks of a model, each with parts of its own built from the same
    arguments (``build_esc_blocks(cfg, input_shape)`` reads them from a config).

    Args:
        input_shape: the backbone's :class:`BackboneShape` (its embedding width and grid).
        num_blocks: N, the paper's 4.
        hidden_dim: C, the correlation embedding's width.
        deep_supervision: whether every block's refined map is supervised (``BLOCK_LOSS_WEIGHT > 0``). A block
            gets a map head when something reads its map: deep supervision, or the next block's prompt generator.
        class_chunk: see :class:`ESCBlock`.
        prompts, sam: the arguments of every block's :class:`PseudoPromptGenerator` and :class:`SAMBlock` but the
            sizes (their ``from_config``); None for both builds blocks without SAM.
        sam_checkpoint: an official SAM checkpoint (``sam_vit_b_01ec64.pth``) loaded into every block's SAM parts,
            read once; "" keeps them random (MODEL.WEIGHTS usually provides them).
        sam_projection_weights: an aligned image projection (``esc-net-pretrain align``) loaded into every block's
            SAM block after the SAM checkpoint; "" keeps the checkpoint's or the random initialisation.
        vlf: the arguments of every block's :class:`VisionLanguageFusion` but the sizes and the block's place.
        former: refused, each named with its place in these arguments (LazyConfig files written for the flat
            arguments of version 3, ``model.blocks.num_points``, say where the value goes now).

    Raises:
        ValueError: naming the file of an unreadable SAM checkpoint, or the keys of one that does not fit.
        TypeError: naming the new place of a former argument.
    """
    if former:
        moved = ", ".join(f"{key} -> {_MOVED_ARGUMENTS.get(key, 'no such argument')}" for key in sorted(former))
        raise TypeError(f"build_esc_blocks takes its parts' arguments in groups now: {moved}")
    check_minimum("MODEL.ESC_NET.NUM_BLOCKS", num_blocks, 1)
    if (prompts is None) != (sam is None):
        raise ValueError(
            "build_esc_blocks takes the prompt generator's and the SAM block's arguments together, or none"
        )
    use_sam = sam is not None
    D = input_shape.embed_dim
    blocks = []
    for i in range(num_blocks):
        # built in this order, which decides how random initialisations draw from the generator
        generator = PseudoPromptGenerator(with_boxes="boxes" in sam["prompt_types"], **prompts) if use_sam else None
        sam_block = SAMBlock(clip_dim=D, text_dim=D, grid_size=input_shape.grid_size, **sam) if use_sam else None
        merge_sam = nn.Conv2d(sam_block.transformer.embedding_dim, hidden_dim, 1, bias=False) if use_sam else None
        merge_clip = nn.Conv2d(D, hidden_dim, kernel_size=1)
        fusion = VisionLanguageFusion(
            input_shape=input_shape, hidden_dim=hidden_dim, guidance_dim=hidden_dim, block_index=i, **vlf
        )
        with_map_head = deep_supervision or (use_sam and i < num_blocks - 1)
        blocks.append(
            ESCBlock(
                prompt_generator=generator,
                sam=sam_block,
                merge_sam=merge_sam,
                merge_clip=merge_clip,
                vlf=fusion,
                map_head=nn.Conv2d(hidden_dim, 1, kernel_size=1) if with_map_head else None,
                class_chunk=class_chunk,
            )
        )
    if use_sam and sam_checkpoint:
        try:
            sam_state = sam_checkpoint_state(sam_checkpoint)  # read the file once for all blocks
        except READ_ERRORS as error:  # name the file of an empty, truncated or code-running checkpoint
            raise unreadable_weights_error(sam_checkpoint, error) from error
        for block in blocks:
            load_sam_state(block.sam, sam_state, sam_checkpoint)
    if use_sam and sam_projection_weights:
        projection_state = read_projection_weights(sam_projection_weights)
        for block in blocks:
            load_projection_weights(block.sam.image_proj, projection_state, sam_projection_weights)
    return blocks
