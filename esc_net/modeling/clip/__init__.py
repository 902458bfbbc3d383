"""CLIP image and text encoders (open_clip) with q/v-only attention fine-tuning."""

from esc_net.modeling.clip.encoder import FINETUNE_MODES, CLIPEncoder
from esc_net.modeling.clip.qv_attention import SplitQKVAttention, split_qkv_attention
from esc_net.modeling.clip.text_prompts import SYNONYM_MODES, build_prompts, pool_prompt_embeddings

__all__ = [
    "CLIPEncoder",
    "FINETUNE_MODES",
    "SYNONYM_MODES",
    "SplitQKVAttention",
    "build_prompts",
    "pool_prompt_embeddings",
    "split_qkv_attention",
]
