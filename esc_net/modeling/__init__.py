"""ESC-Net's modules; importing this registers the ``ESCNet`` meta-architecture with Detectron2."""
from .clip import CLIPEncoder
from .decoder import CorrelationDecoder
from .esc_block import ESCBlock, build_esc_blocks
from .inference import InferenceProtocol
from .meta_arch import ESCNet
from .prompt_generator import PseudoPromptGenerator, PseudoPrompts
from .sam_block import SAMBlock
from .sam_checkpoint import load_sam_state, sam_checkpoint_state
from .vlf_block import VisionLanguageFusion

__all__ = [
    "CLIPEncoder",
    "CorrelationDecoder",
    "ESCBlock",
    "ESCNet",
    "InferenceProtocol",
    "PseudoPromptGenerator",
    "PseudoPrompts",
    "SAMBlock",
    "VisionLanguageFusion",
    "build_esc_blocks",
    "load_sam_state",
    "sam_checkpoint_state",
]
