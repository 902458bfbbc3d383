"""A one-image predictor for ESC-Net (in the style of Detectron2's ``DefaultPredictor``) and the metadata to
visualise its output with Detectron2's ``Visualizer``."""

import hashlib
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from matplotlib.colors import hsv_to_rgb

from esc_net.data.vocabulary import resolve_vocabularies
from esc_net.utils.checkpoint import load_model_weights
from esc_net_runtime.inputs import check_bgr_image, check_output_size
from esc_net_runtime.vocabulary_rules import split_synonyms

__all__ = [
    "BACKGROUND_NAMES",
    "ESCNetPredictor",
    "class_color",
    "class_colors",
    "class_index",
    "display_name",
    "vocabulary_metadata",
]

logger = logging.getLogger(__name__)

# Class names drawn in a neutral grey: what is not an object of interest.
BACKGROUND_NAMES = frozenset({"background", "void", "other", "others", "unlabeled", "unlabelled", "nothing"})


class ESCNetPredictor:
    """Builds ESC-Net from a config, loads its weights, and segments one BGR image at a time into the classes of
    an open vocabulary.

    Compared with calling the model directly, it (1) loads ``cfg.MODEL.WEIGHTS`` strictly (a checkpoint that
    does not fit raises, listing the keys); (2) takes the image as OpenCV gives it (BGR, HWC, uint8) and converts
    it to ``cfg.INPUT.FORMAT``; (3) runs without gradients; (4) holds a default vocabulary
    (:meth:`set_vocabulary`) for the calls that give none. The model resizes the image itself (sliding window or
    whole-image view, as configured) and returns scores at the input's size.

    Example::

        import cv2, esc_net
        from detectron2.config import get_cfg

        cfg = get_cfg()
        esc_net.add_esc_net_config(cfg)
        cfg.merge_from_file("configs/esc_net_tiny_shapes.yaml")
        cfg.MODEL.WEIGHTS = "output/esc_net_tiny_shapes/model_final.pth"
        predictor = esc_net.ESCNetPredictor(cfg)
        predictor.set_vocabulary(["background", "red circle", "sofa, couch"])  # synonyms after commas
        scores = predictor(cv2.imread("image.png"))["sem_seg"]  # [3, H, W] in [0, 1]
        labels = scores.argmax(dim=0)                             # [H, W] indices into predictor.vocabulary

    Attributes:
        cfg: a frozen copy of the config.
        model: the ESC-Net model, in eval mode, on ``cfg.MODEL.DEVICE``.
    """

    def __init__(self, cfg):
        """
        Args:
            cfg: a Detectron2 config with ``add_esc_net_config`` applied. The vocabulary at start is the model's
                default (``MODEL.ESC_NET.VOCABULARY``, else ``DATASETS.TEST[0]``'s, read here from the dataset
                catalog; none if both are empty: call :meth:`set_vocabulary`).

        Raises:
            FileNotFoundError, ValueError: ``cfg.MODEL.WEIGHTS`` is missing or does not fit the model.
            ValueError: ``cfg.INPUT.FORMAT`` is neither "RGB" nor "BGR".
        """
        self.cfg = resolve_vocabularies(cfg)  # the model takes names: a dataset named by the config is read here
        self.cfg.freeze()
        self.model = build_model(self.cfg)
        self.model.eval()
        if self.cfg.MODEL.WEIGHTS:
            load_model_weights(self.model, self.cfg.MODEL.WEIGHTS)
        else:
            logger.warning("MODEL.WEIGHTS is empty: predicting with randomly initialised ESC-Net modules")
        self._vocabulary: Optional[List[str]] = self.model.vocabulary

    @property
    def vocabulary(self) -> Optional[List[str]]:
        """The class names scored, in output order (None until set, if the config names no test dataset)."""
        return list(self._vocabulary) if self._vocabulary is not None else None

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Sets the class names to score: a non-empty list; a name may hold synonyms, "sofa, couch".

        Warns (UserWarning) about names too long for the text encoder, whose ends are cut off.

        Raises:
            ValueError: the list is empty, holds an empty name or one with a line break, or repeats a name.
            TypeError: a single string, None or another non-list was given instead of a list.
        """
        self._vocabulary = self.model.check_vocabulary(class_names)

    def __call__(
        self,
        image_bgr: np.ndarray,
        vocabulary: Optional[Sequence[str]] = None,
        output: Optional[str] = None,
        top_k: Optional[int] = None,
        output_size: Optional[Tuple[int, int]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Segments one image.

        Args:
            image_bgr: [H, W, 3] uint8 in BGR order, as ``cv2.imread`` returns it; H and W at least 1.
            vocabulary: class names for this call only, checked as :meth:`set_vocabulary` checks them (the
                predictor's :attr:`vocabulary` is left unchanged, so that callers in several threads can each pass
                their own); default :attr:`vocabulary`. No length limit applies here: a service that takes names
                from its users checks them with ``check_vocabulary(names, VocabularyLimits())`` first, as the
                demos do (:mod:`esc_net_runtime.vocabulary_rules`; tokenising a very long name takes minutes).
            output: "scores" or "labels"; default ``MODEL.ESC_NET.INFERENCE_OUTPUT`` ("scores").
            top_k: with "labels", also return the k best classes per pixel; default ``INFERENCE_TOP_K`` (0).
            output_size: the (H, W) to predict at (Detectron2's "height"/"width" of the input); default the
                image's. The demos ask for their display size, so that a large photo costs no full-size output.

        Returns:
            "scores": ``{"sem_seg": Tensor[N, H, W]}``, per-class scores in [0, 1] for the N names of the
            vocabulary used (N x H x W floats). "labels": ``{"sem_seg_labels": Tensor[H, W]}``, the index of the
            best class (uint8 up to 255 classes, else int16), plus ``"sem_seg_topk_labels"`` and
            ``"sem_seg_topk_scores"`` (float16) [k, H, W] with ``top_k``; computed in tiles, in working memory
            that does not grow with the image or the vocabulary. On the model's device; H, W as ``output_size``.

        Raises:
            ValueError: the image is not an [H, W, 3] uint8 array, is empty (a side of 0), no vocabulary is set,
                ``vocabulary`` is empty or holds an empty name, ``output`` is unknown, ``top_k`` is outside
                [0, N], ``output_size`` is not two positive integers, or the model's scores hold NaN.
            TypeError: ``vocabulary`` is a single string instead of a list, or holds a name that is not a string.
        """
        height, width = check_bgr_image(image_bgr)
        image = image_bgr[:, :, ::-1] if self.cfg.INPUT.FORMAT == "RGB" else image_bgr
        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if vocabulary is None and self._vocabulary is None:
            raise ValueError("the predictor has no vocabulary: call set_vocabulary(names) or pass vocabulary=")
        vocabulary = self._vocabulary if vocabulary is None else self.model.check_vocabulary(vocabulary)
        if output_size is not None:
            height, width = check_output_size(output_size)
        request = {"image": image, "height": height, "width": width, "vocabulary": vocabulary}
        if output is not None:
            request["output"] = output
        if top_k is not None:
            request["top_k"] = top_k
        with torch.no_grad():
            return self.model([request])[0]

    @property
    def metadata(self) -> Metadata:
        """Detectron2 metadata of the current vocabulary, for ``Visualizer`` (see :func:`vocabulary_metadata`)."""
        if self.vocabulary is None:
            raise ValueError("the predictor has no vocabulary yet: call set_vocabulary(names)")
        return vocabulary_metadata(self.vocabulary)


def display_name(class_name: str) -> str:
    """The name shown for a class: its first synonym ("sofa, couch" -> "sofa")."""
    return split_synonyms(class_name)[0]


def class_index(vocabulary: Sequence[str], name: str) -> Optional[int]:
    """The index of the class ``name`` in ``vocabulary``, given as the entry itself ("sofa, couch") or as shown,
    its first synonym ("sofa"); None if it is neither."""
    name = name.strip()
    for i, entry in enumerate(vocabulary):
        if name in (entry, display_name(entry)):
            return i
    return None


def class_color(class_name: str) -> List[int]:
    """The RGB colour (0-255) of a class, a function of its shown name alone (its first synonym, without case
    or extra spaces), so that a class keeps its colour whatever the vocabulary around it.

    Background-like names (:data:`BACKGROUND_NAMES`, or ending in "background") get a grey; other names a
    saturated colour whose hue, saturation and brightness come from a hash of the name. Two names may happen to
    get similar colours (the overlay also writes the names).
    """
    shown = " ".join(display_name(class_name).lower().split())
    code = int.from_bytes(hashlib.blake2b(shown.encode("utf-8"), digest_size=8).digest(), "little")
    if shown in BACKGROUND_NAMES or shown.endswith(" background"):
        return [96 + code % 64] * 3  # neutral, a little lighter or darker per name
    hue, saturation, value = (code & 0xFFFF) / 0x10000, (code >> 16 & 0xFF) / 255, (code >> 24 & 0xFF) / 255
    hsv = (hue, 0.55 + 0.4 * saturation, 0.6 + 0.4 * value)  # never pale or dark enough to read as grey
    return np.round(hsv_to_rgb(hsv) * 255).astype(int).tolist()


def class_colors(class_names: Sequence[str], reference: Optional[Metadata] = None) -> List[List[int]]:
    """One RGB colour per class: the ``reference`` dataset's own (its ``stuff_colors``) for the names it has,
    :func:`class_color` for the others."""
    known = {}
    if reference is not None and reference.get("stuff_colors", None):
        known = {display_name(n).lower(): list(c) for n, c in zip(reference.stuff_classes, reference.stuff_colors)}
    return [known.get(display_name(name).lower()) or class_color(name) for name in class_names]


def vocabulary_metadata(class_names: Sequence[str], colors: Optional[Sequence[Sequence[int]]] = None) -> Metadata:
    """Metadata for ``Visualizer.draw_sem_seg`` on a label map over ``class_names``.

    Args:
        class_names: the vocabulary, in label order; synonyms are shown by their first name.
        colors: one RGB colour (0-255) per class; default :func:`class_colors` (a colour per name).

    Returns:
        A ``Metadata`` (not registered in the ``MetadataCatalog``) with ``stuff_classes`` and ``stuff_colors``.
    """
    if colors is None:
        colors = class_colors(class_names)
    elif len(colors) != len(class_names):
        raise ValueError(f"got {len(colors)} colours for {len(class_names)} classes")
    return Metadata(name="esc_net_vocabulary").set(
        stuff_classes=[display_name(n) for n in class_names], stuff_colors=[list(c) for c in colors]
    )
