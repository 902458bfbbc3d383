"""What ESC-Net needs of a vision-language backbone, and the registry that chooses one by name.

A backbone encodes images into dense features in a joint image-text space (plus the intermediate features the
decoder's skip connections read) and class names into unit vectors of the same space. open_clip's CLIP
(:class:`~esc_net.modeling.clip.CLIPEncoder`, registered as ``"CLIPEncoder"``) is the one implementation;
``MODEL.ESC_NET.BACKBONE`` names the class, as Detectron2's ``MODEL.BACKBONE.NAME`` names its backbones.

Another backbone is a subclass of :class:`VisionLanguageBackbone` with Detectron2's ``@configurable`` constructor
(its ``from_config`` reads its own config keys), registered with ``@VL_BACKBONE_REGISTRY.register()``.

Notation: B images, N classes, S x S the input size, h x w = S / patch the feature grid, D the joint embedding
width, C the width of the skip features.
"""

from abc import ABCMeta, abstractmethod
from typing import List, NamedTuple, Sequence, Tuple

from detectron2.utils.registry import Registry
from torch import Tensor, nn

__all__ = ["VL_BACKBONE_REGISTRY", "BackboneShape", "VisionLanguageBackbone", "backbone_shape", "vl_backbone_class"]

VL_BACKBONE_REGISTRY = Registry("VL_BACKBONE")
VL_BACKBONE_REGISTRY.__doc__ = """
Vision-language backbones of ESC-Net: subclasses of :class:`VisionLanguageBackbone` whose ``from_config`` reads
their arguments from the config.
"""


class BackboneShape(NamedTuple):
    """The sizes the other modules of ESC-Net are built for (Detectron2's ``ShapeSpec`` for a backbone).

    Attributes:
        embed_dim: D, the width of the dense features and of the class embeddings (the joint space).
        width: C, the width of the skip features.
        patch_size: input pixels per feature cell (square).
        grid_size: (h, w), the feature grid of one S x S input.
        num_skips: the number of skip features (one per stage of the decoder).
    """

    embed_dim: int
    width: int
    patch_size: int
    grid_size: Tuple[int, int]
    num_skips: int

    @property
    def image_size(self) -> int:
        """S, the side of the square input."""
        return self.grid_size[0] * self.patch_size


class VisionLanguageBackbone(nn.Module, metaclass=ABCMeta):
    """The interface between ESC-Net and its vision-language model.

    Fine-tuning: the backbone decides which of its parameters train (``requires_grad``; ``CLIP_FINETUNE`` for
    CLIP). All of them belong to the pre-trained part, whose learning rate is ``SOLVER.CLIP_MULTIPLIER`` times
    the base rate (:mod:`esc_net.solver` finds them through this class, not by name).

    Attributes:
        pixel_mean, pixel_std: 3-tuples in the 0-255 RGB scale; the images :meth:`encode_image` takes are normalised
            with them (the model's own preprocessing: ESC-Net has no other).
    """

    pixel_mean: Tuple[float, float, float]
    pixel_std: Tuple[float, float, float]

    @abstractmethod
    def output_shape(self) -> BackboneShape:
        """The sizes of this backbone's outputs."""

    @classmethod
    @abstractmethod
    def output_shape_of(cls, **arguments) -> BackboneShape:
        """The :meth:`output_shape` of the backbone these constructor arguments build, without building it: the
        other parts are built for it, in a LazyConfig too (``ESCNet.lazy_call`` passes every argument; take the ones
        the sizes depend on)."""

    @abstractmethod
    def encode_image(self, images: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """
        Args:
            images: [B, 3, S, S], normalised with ``pixel_mean`` / ``pixel_std``.
        Returns:
            dense: [B, D, h, w] dense features in the joint space (not L2-normalised).
            skips: the features of the decoder's skip connections, [B, C, h, w] each, in the decoder's stage order.
        """

    @abstractmethod
    def encode_text(self, class_names: Sequence[str]) -> Tensor:
        """[N, D] unit-norm embeddings of N class names ("a, b" lists synonyms)."""

    @property
    @abstractmethod
    def logit_scale(self) -> Tensor:
        """The logarithm of the scale that turns the backbone's cosines into logits (a scalar tensor): ESC-Net's
        first pseudo prompts start from it."""

    @property
    @abstractmethod
    def image_tower(self) -> nn.Module:
        """The submodule that runs the images (FLOPs and weights are counted per tower; the rest of the backbone
        is the text tower)."""

    def truncated_names(self, class_names: Sequence[str]) -> List[str]:
        """The names too long for the text encoder, whose ends are cut off (none by default)."""
        return []

    def clear_text_cache(self) -> None:
        """Forgets any text embeddings kept between calls (a backbone that keeps none has nothing to do)."""


def vl_backbone_class(name: str) -> type:
    """The backbone class registered as ``name`` (``MODEL.ESC_NET.BACKBONE``).

    Raises:
        KeyError: no backbone of that name is registered (Detectron2's message lists the registered ones).
        TypeError: the registered class does not implement :class:`VisionLanguageBackbone`.
    """
    backbone = VL_BACKBONE_REGISTRY.get(name)
    if not (isinstance(backbone, type) and issubclass(backbone, VisionLanguageBackbone)):
        raise TypeError(
            f"MODEL.ESC_NET.BACKBONE {name!r} is {backbone!r}, not a VisionLanguageBackbone "
            "(esc_net/modeling/backbone.py)"
        )
    return backbone


def backbone_shape(cfg) -> BackboneShape:
    """The :class:`BackboneShape` of the backbone ``cfg`` describes (``MODEL.ESC_NET.BACKBONE`` and its own keys),
    without building it: for tools that build parts of ESC-Net on their own (the alignment stage's projection)."""
    backbone = vl_backbone_class(cfg.MODEL.ESC_NET.BACKBONE)
    return backbone.output_shape_of(**backbone.from_config(cfg))
