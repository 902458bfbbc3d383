"""One ESC-Block: pseudo prompts -> SAM block -> feature merge -> Vision-Language Fusion.

Notation: B images, N classes, h x w the CLIP grid, D the CLIP joint-embedding width, C the correlation-embedding
width (``HIDDEN_DIM``), E the SAM transformer width.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from esc_net.modeling.prompt_generator import PseudoPromptGenerator
from esc_net.modeling.sam_block import SAMBlock
from esc_net.modeling.sam_checkpoint import load_sam_state, sam_checkpoint_state
from esc_net.modeling.sam_projection import load_projection_weights, read_projection_weights
from esc_net.modeling.vlf_block import VisionLanguageFusion
from esc_net.utils.checkpoint import READ_ERRORS, unreadable_weights_error


class ESCBlock(nn.Module):
    """Refines the correlation embedding of every class once.

    1. The Pseudo Prompt Generator turns each class's current correlation map into N_o points and a mask.
    2. The SAM block (SAM's prompt encoder and two-way transformer, CLIP features as the image embedding) gives
       class-specific image features (F_v^n)'.
    3. Merge: F_v'^n = conv1x1([F_v ; (F_v^n)']). The 1x1 conv over the concatenation is computed as the sum of
       a conv of F_v (once per image) and a conv of (F_v^n)' (per class), which is the same function without
       materialising N copies of the D-channel CLIP features.
    4. The VLF block refines the correlation embedding with F_v'^n (image guidance) and the text embeddings
       (text guidance); a 1x1 conv (``map_head``) reads the refined correlation map that the next block's prompts
       come from.

    Ablation switches: ``use_sam=False`` skips steps 1-2 and guides the VLF block with the plain CLIP features
    (F_v'^n = conv1x1(F_v) for every class); ``prompt_types`` chooses SAM's prompts (see :class:`SAMBlock`).
    ``with_map_head=False`` builds no ``map_head``: the last block's map is only needed for deep supervision, and a
    head that nothing reads would get no gradient.
    """

    def __init__(
        self,
        *,
        clip_dim: int,
        hidden_dim: int,
        grid_size: Tuple[int, int],
        num_points: int,
        threshold_factor: float,
        kmeans_iters: int,
        sam_embed_dim: int,
        sam_depth: int,
        sam_mlp_dim: int,
        sam_num_heads: int,
        num_heads: int,
        window_size: int,
        text_guidance_dim: int,
        use_sam: bool = True,
        prompt_types: Sequence[str] = ("points", "mask"),
        image_projection: str = "linear",
        mask_mode: str = "posterior",
        with_map_head: bool = True,
        swin_depth: int = 1,
        block_index: int = 0,
        class_chunk: int = 16,
        class_pad: int = 0,
        reference: bool = False,
    ):
        """Keyword arguments are the ``MODEL.ESC_NET`` keys of the same meaning (defaults: the config's);
        ``with_map_head``: build the 1x1 map head (see the class docstring); ``block_index``: the block's place in
        the stack (it decides which Swin blocks shift their windows); ``reference``: the plain form of the SAM
        and VLF blocks, computed on all classes at once (``IMPLEMENTATION``)."""
        super().__init__()
        self.hidden_dim = hidden_dim
        self.use_sam = use_sam
        if use_sam:
            self.prompt_generator = PseudoPromptGenerator(
                num_points, threshold_factor, kmeans_iters, with_boxes="boxes" in prompt_types, mask_mode=mask_mode
            )
            self.sam = SAMBlock(
                clip_dim=clip_dim,
                text_dim=clip_dim,
                grid_size=grid_size,
                embed_dim=sam_embed_dim,
                depth=sam_depth,
                mlp_dim=sam_mlp_dim,
                num_heads=sam_num_heads,
                prompt_types=prompt_types,
                image_projection=image_projection,
                reference=reference,
            )
            self.merge_sam = nn.Conv2d(sam_embed_dim, hidden_dim, kernel_size=1, bias=False)
        self.merge_clip = nn.Conv2d(clip_dim, hidden_dim, kernel_size=1)
        self.vlf = VisionLanguageFusion(
            hidden_dim=hidden_dim,
            guidance_dim=hidden_dim,
            text_dim=clip_dim,
            grid_size=grid_size,
            num_heads=num_heads,
            window_size=window_size,
            text_guidance_dim=text_guidance_dim,
            # Regular and shifted windows alternate through the whole stack of blocks.
            swin_shifts=[0 if (block_index * swin_depth + j) % 2 == 0 else None for j in range(swin_depth)],
            class_chunk=class_chunk,
            class_pad=class_pad,
            reference=reference,
        )
        self.map_head = nn.Conv2d(hidden_dim, 1, kernel_size=1) if with_map_head else None
        # checkpoints written before the head was named map_head keep loading
        self._register_load_state_dict_pre_hook(_rename_corr_head)

    def forward(
        self,
        corr_embed: torch.Tensor,
        corr_map: Optional[torch.Tensor],
        image_feats: torch.Tensor,
        text: torch.Tensor,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            corr_embed: [B, N, C, h, w] correlation embedding.
            corr_map: [B, N, h, w] the current correlation (logit) map the pseudo prompts are drawn from (unused,
                and may be None, without the SAM block).
            image_feats: [B, D, h, w] dense CLIP features F_v.
            text: [B, N, D] class text embeddings.

        Returns:
            corr_embed: [B, N, C, h, w] refined correlation embedding.
            corr_map: [B, N, h, w] refined correlation map, or None for a block built without a map head.
        """
        B, N, C, h, w = corr_embed.shape
        clip_guidance = self.merge_clip(image_feats).unsqueeze(1)  # [B, 1, C, h, w], shared by the classes
        if self.use_sam:
            # once per image, not once per chunk of classes (the reference path needs none)
            sam_image_side = None if self.sam.reference else self.sam.image_side(image_feats)
            posterior = self.prompt_generator.class_posterior(corr_map)  # over the whole vocabulary, once

            def guidance(classes: slice) -> torch.Tensor:
                """F_v'^n of a slice of classes, [B, n, C, h, w]: the VLF block asks for one chunk at a time."""
                prompts = self.prompt_generator(
                    corr_map[:, classes], None if posterior is None else posterior[:, classes]
                )
                sam_feats = self.sam(
                    image_feats,
                    text[:, classes],
                    prompts.points,
                    prompts.labels,
                    prompts.masks,
                    prompts.boxes,
                    image_side=sam_image_side,
                )  # [B*n, E, h, w]
                return F.gelu(self.merge_sam(sam_feats).unflatten(0, (B, -1)) + clip_guidance)

        else:
            guidance = F.gelu(clip_guidance).expand(B, N, C, h, w)
        corr_embed = self.vlf(corr_embed, guidance, text)
        if self.map_head is None:
            return corr_embed, None
        return corr_embed, self.map_head(corr_embed.flatten(0, 1)).view(B, N, h, w)


def _rename_corr_head(state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "corr_head.")]:
        state_dict[prefix + "map_head." + key[len(prefix + "corr_head.") :]] = state_dict.pop(key)


def build_esc_blocks(
    num_blocks: int,
    *,
    deep_supervision: bool,
    sam_checkpoint: str = "",
    sam_projection_weights: str = "",
    use_sam: bool = True,
    **block_args,
) -> List[ESCBlock]:
    """The ``num_blocks`` consecutive ESC-Blocks of a model (a config's ``MODEL.ESC_NET`` keys, or a LazyConfig's
    ``model.blocks``).

    Args:
        num_blocks: N, the paper's 4.
        deep_supervision: whether every block's refined map is supervised (``BLOCK_LOSS_WEIGHT > 0``). A block
            gets a map head when something reads its map: deep supervision, or the next block's prompt generator.
        sam_checkpoint: an official SAM checkpoint (``sam_vit_b_01ec64.pth``) loaded into every block's SAM parts,
            read once; "" keeps them random (MODEL.WEIGHTS usually provides them).
        sam_projection_weights: an aligned image projection (``esc-net-pretrain align``) loaded into every block's
            SAM block; "" keeps the random initialisation.
        use_sam, block_args: the :class:`ESCBlock` arguments shared by every block (``block_index`` is the
            block's position).

    Raises:
        ValueError: naming the file of an unreadable SAM checkpoint, or the keys of one that does not fit.
    """
    blocks = [
        ESCBlock(
            use_sam=use_sam,
            with_map_head=deep_supervision or (use_sam and i < num_blocks - 1),
            block_index=i,
            **block_args,
        )
        for i in range(num_blocks)
    ]
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
