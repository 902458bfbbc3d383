"""ESC-Net's modules; importing this registers the ``ESCNet`` meta-architecture with Detectron2."""
from .clip import CLIPEncoder
from .decoder import CorrelationDecoder
from .esc_block import ESCBlock
from .meta_arch import ESCNet
from .prompt_generator import PseudoPromptGenerator, PseudoPrompts
from .sam_block import SAMBlock, load_sam_state, sam_checkpoint_state
from .vlf_block import VisionLanguageFusion

__all__ = [
    "CLIPEncoder",
    "CorrelationDecoder",
    "ESCBlock",
    "ESCNet",
    "PseudoPromptGenerator",
    "PseudoPrompts",
    "SAMBlock",
    "VisionLanguageFusion",
    "load_sam_state",
    "sam_checkpoint_state",
]
