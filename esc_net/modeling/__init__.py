"""ESC-Net's modules; importing this registers the ``ESCNet`` meta-architecture with Detectron2 and the
``CLIPEncoder`` backbone with :data:`VL_BACKBONE_REGISTRY`."""

from esc_net.modeling.backbone import VL_BACKBONE_REGISTRY, BackboneShape, VisionLanguageBackbone, vl_backbone_class
from esc_net.modeling.clip import CLIPEncoder
from esc_net.modeling.decoder import CorrelationDecoder
from esc_net.modeling.esc_block import ESCBlock, build_esc_blocks
from esc_net.modeling.inference import InferenceProtocol
from esc_net.modeling.meta_arch import ESCNet
from esc_net.modeling.prompt_generator import PseudoPromptGenerator, PseudoPrompts
from esc_net.modeling.sam_block import SAMBlock
from esc_net.modeling.sam_checkpoint import load_sam_state, sam_checkpoint_state
from esc_net.modeling.vlf_block import VisionLanguageFusion

__all__ = [
    "VL_BACKBONE_REGISTRY",
    "BackboneShape",
    "CLIPEncoder",
    "CorrelationDecoder",
    "ESCBlock",
    "ESCNet",
    "InferenceProtocol",
    "PseudoPromptGenerator",
    "PseudoPrompts",
    "SAMBlock",
    "VisionLanguageBackbone",
    "VisionLanguageFusion",
    "build_esc_blocks",
    "load_sam_state",
    "sam_checkpoint_state",
    "vl_backbone_class",
]
