"""One ESC-Block: pseudo prompts -> SAM block -> feature merge -> Vision-Language Fusion.

Notation: B images, N classes, h x w the CLIP grid, D the CLIP joint-embedding width, C the correlation-embedding
width (``HIDDEN_DIM``), S the SAM transformer width.
"""
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .prompt_generator import PseudoPromptGenerator
from .sam_block import SAMBlock
from .vlf_block import VisionLanguageFusion


class ESCBlock(nn.Module):
    """Refines the correlation embedding of every class once.

    1. The Pseudo Prompt Generator turns each class's current correlation map into N_o points and a mask.
    2. The SAM block (SAM's prompt encoder and two-way transformer, CLIP features as the image embedding) gives
       class-specific image features (F_v^n)'.
    3. Merge: F_v'^n = conv1x1([F_v ; (F_v^n)']). The 1x1 conv over the concatenation is computed as the sum of
       a conv of F_v (once per image) and a conv of (F_v^n)' (per class), which is the same function without
       materialising N copies of the D-channel CLIP features.
    4. The VLF block refines the correlation embedding with F_v'^n (image guidance) and the text embeddings
       (text guidance); a 1x1 conv reads the refined correlation map that the next block's prompts come from.
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
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.prompt_generator = PseudoPromptGenerator(num_points, threshold_factor, kmeans_iters)
        self.sam = SAMBlock(
            clip_dim=clip_dim,
            text_dim=clip_dim,
            grid_size=grid_size,
            embed_dim=sam_embed_dim,
            depth=sam_depth,
            mlp_dim=sam_mlp_dim,
            num_heads=sam_num_heads,
        )
        self.merge_clip = nn.Conv2d(clip_dim, hidden_dim, kernel_size=1)
        self.merge_sam = nn.Conv2d(sam_embed_dim, hidden_dim, kernel_size=1, bias=False)
        self.vlf = VisionLanguageFusion(
            hidden_dim=hidden_dim,
            guidance_dim=hidden_dim,
            text_dim=clip_dim,
            grid_size=grid_size,
            num_heads=num_heads,
            window_size=window_size,
            text_guidance_dim=text_guidance_dim,
        )
        self.corr_head = nn.Conv2d(hidden_dim, 1, kernel_size=1)

    def forward(
        self, corr_embed: torch.Tensor, corr_map: torch.Tensor, image_feats: torch.Tensor, text: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            corr_embed: [B, N, C, h, w] correlation embedding.
            corr_map: [B, N, h, w] the current correlation (logit) map the pseudo prompts are drawn from.
            image_feats: [B, D, h, w] dense CLIP features F_v.
            text: [B, N, D] class text embeddings.

        Returns:
            corr_embed: [B, N, C, h, w] refined correlation embedding.
            corr_map: [B, N, h, w] refined correlation map.
        """
        B, N, C, h, w = corr_embed.shape
        prompts = self.prompt_generator(corr_map)
        sam_feats = self.sam(image_feats, text, prompts.points, prompts.labels, prompts.masks)  # [B*N, S, h, w]
        guidance = self.merge_sam(sam_feats).view(B, N, C, h, w) + self.merge_clip(image_feats).unsqueeze(1)
        corr_embed = self.vlf(corr_embed, F.gelu(guidance), text)
        corr_map = self.corr_head(corr_embed.flatten(0, 1)).view(B, N, h, w)
        return corr_embed, corr_map
