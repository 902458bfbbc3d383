"""A one-image predictor that runs an exported ESC-Net (``esc-net-export``) on ONNX Runtime, without PyTorch."""

import functools
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from esc_net_runtime.inputs import check_bgr_image, check_output_size
from esc_net_runtime.prompts import SYNONYM_MODES, check_templates, prompt_list, truncated_names, warn_truncated_names
from esc_net_runtime.protocol import (
    INFERENCE_MODES,
    OUTPUT_MODES,
    check_top_k,
    full_resolution_output,
    merge_windows,
    resize_image,
    score_in_passes,
    window_views,
)
from esc_net_runtime.sliding_window import SlidingWindowLayout
from esc_net_runtime.tokenizer import ClipTokenizer
from esc_net_runtime.vocabulary_rules import check_vocabulary

__all__ = ["EXPORT_FILES", "EXPORT_FORMAT", "ONNXPredictor"]

# The version of an export folder's layout and JSON that this runtime reads (esc-net-export writes it), and its files.
EXPORT_FORMAT = 1
EXPORT_FILES = {
    "image": "image_scorer.onnx",
    "text": "text_encoder.onnx",
    "tokenizer": "tokenizer.json",
    "settings": "esc_net_export.json",
}
_METADATA_KEYS = (
    "format",
    "image_size",
    "out_size",
    "pixel_mean",
    "pixel_std",
    "context_length",
    "templates",
    "synonym_mode",
    "inference",
    "inference_output",
    "inference_top_k",
)
_INFERENCE_KEYS = (
    "mode",
    "sliding_resize",
    "sliding_window",
    "sliding_overlap",
    "max_classes_per_view",
    "view_classes_per_pass",
)
# Prompts per run of the text encoder: its activations grow with them (a 847-class vocabulary in one run would
# hold every prompt's). Classes are never split across runs, since the graph pools a class's prompts.
_PROMPTS_PER_TEXT_RUN = 256
# How many vocabularies' class embeddings are kept (the current one and those passed to recent calls).
_EMBEDDING_CACHE_SIZE = 4


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("ONNXPredictor needs onnxruntime: pip install 'esc_net[deploy]'") from error
    return onnxruntime


def _read_metadata(folder: str) -> Dict:
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"ESC-Net export folder not found: {folder} (esc-net-export --config-file CFG --output {folder} writes one)"
        )
    missing = [name for name in EXPORT_FILES.values() if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(
            f"the ESC-Net export folder {folder} lacks {', '.join(missing)}; export the model again into it with "
            f"esc-net-export --config-file CFG --output {folder}"
        )
    path = os.path.join(folder, EXPORT_FILES["settings"])
    with open(path, encoding="utf-8") as f:
        try:
            metadata = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} is not valid JSON ({error}); export the model again with esc-net-export"
            ) from error
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise ValueError(
            f"{path} is of export format {found!r}; this runtime reads format {EXPORT_FORMAT}: export the model "
            "again with the esc-net-export of this version"
        )
    missing = [k for k in _METADATA_KEYS if k not in metadata]
    missing += [f"inference.{k}" for k in _INFERENCE_KEYS if k not in metadata.get("inference", {})]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing}; export the model again with esc-net-export")
    return metadata


class ONNXPredictor:
    """Segments one BGR image at a time into the classes of an open vocabulary with an exported ESC-Net, on ONNX
    Runtime: :class:`esc_net.ESCNetPredictor`'s interface and results (as numpy arrays), and no PyTorch,
    Detectron2 or open_clip at import or in use.

    The export folder (``esc-net-export --config-file CFG --output DIR``) holds the text encoder and the image
    scorer (one view's class scores, class cap included) as ONNX graphs, the tokenizer, and a JSON of what runs
    around them. This class runs the rest of the inference protocol as the PyTorch model does: the image resized
    to the protocol's input, the sliding windows and the global view, passes over views
    (``VIEW_CLASSES_PER_PASS``), the merge, and the output at the image's size (scores, or label maps in bounded
    memory) (:mod:`esc_net_runtime.protocol`).

    Unlike :class:`esc_net.ESCNetPredictor` it has no ``metadata`` property (Detectron2's ``Metadata``, for its
    ``Visualizer``): draw with :func:`esc_net.predictor.vocabulary_metadata` where Detectron2 is installed. Its
    tokenizer equals open_clip's on every class name of the project's benchmarks, but for a few exotic texts (mojibake
    that ftfy would repair, terminal escapes, HTML entities beside a "<"): see
    :data:`esc_net_runtime.tokenizer.KNOWN_DIFFERENCES`.

    Example::

        import cv2
        from esc_net_runtime import ONNXPredictor

        predictor = ONNXPredictor("export/esc_net_tiny_shapes")
        predictor.set_vocabulary(["background", "red circle", "sofa, couch"])  # synonyms after commas
        scores = predictor(cv2.imread("image.png"))["sem_seg"]  # [3, H, W] float32 in [0, 1]
        labels = predictor(cv2.imread("image.png"), output="labels")["sem_seg_labels"]  # [H, W] uint8

    Args:
        folder: the export folder.
        threads: ONNX Runtime's threads within an operator (None: its default, one per physical core).
        providers: ONNX Runtime's execution providers in order of preference (None: ``["CPUExecutionProvider"]``;
            e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` with onnxruntime-gpu).

    Raises:
        FileNotFoundError: the folder is missing or lacks one of :data:`EXPORT_FILES` (the message names them).
        ValueError: its JSON is of another export format, lacks keys or contradicts the tokenizer; ``threads`` is not
            a positive integer.
        ImportError: onnxruntime or tokenizers is not installed (``pip install 'esc_net[deploy]'``).
    """

    def __init__(self, folder: str, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None (ONNX Runtime's default), got {threads!r}")
        metadata = _read_metadata(folder)
        self._metadata = metadata
        self._templates = check_templates(metadata["templates"])
        if metadata["synonym_mode"] not in SYNONYM_MODES:
            raise ValueError(f"{folder}: synonym_mode must be one of {SYNONYM_MODES}, got {metadata['synonym_mode']!r}")
        inference = metadata["inference"]
        if inference["mode"] not in INFERENCE_MODES:
            raise ValueError(f"{folder}: inference mode must be one of {INFERENCE_MODES}, got {inference['mode']!r}")
        self._tokenizer = ClipTokenizer(os.path.join(folder, EXPORT_FILES["tokenizer"]))
        if self._tokenizer.context_length != metadata["context_length"]:
            raise ValueError(
                f"{folder}: the tokenizer's context length ({self._tokenizer.context_length}) is not the text "
                f"encoder's ({metadata['context_length']}); export the model again with esc-net-export"
            )
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = list(providers) if providers is not None else ["CPUExecutionProvider"]

        def session(name: str):
            return ort.InferenceSession(os.path.join(folder, name), sess_options=options, providers=providers)

        self._text_encoder, self._image_scorer = session(EXPORT_FILES["text"]), session(EXPORT_FILES["image"])
        image_size, out_size = metadata["image_size"], metadata["out_size"]
        self._layout = SlidingWindowLayout(
            inference["sliding_resize"],
            inference["sliding_window"] or image_size,
            out_size,
            inference["sliding_overlap"],
            view_size=image_size,
        )
        self._sliding = inference["mode"] == "sliding"
        self._pixel_mean = np.asarray(metadata["pixel_mean"], dtype=np.float32)
        self._pixel_std = np.asarray(metadata["pixel_std"], dtype=np.float32)
        self._class_embeddings = functools.lru_cache(maxsize=_EMBEDDING_CACHE_SIZE)(self._encode_text)
        # the model's default vocabulary, as ESCNetPredictor starts with it
        default = metadata.get("vocabulary")
        self._vocabulary: Optional[List[str]] = check_vocabulary(default) if default is not None else None

    @property
    def export_metadata(self) -> Dict:
        """A copy of the export's JSON (input size, normalisation, templates, protocol settings, exporting commit)."""
        return json.loads(json.dumps(self._metadata))

    @property
    def vocabulary(self) -> Optional[List[str]]:
        """The class names scored, in output order: the exported model's default vocabulary (the export's
        ``vocabulary``) until :meth:`set_vocabulary`, None if it had none."""
        return list(self._vocabulary) if self._vocabulary is not None else None

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Sets the class names to score: a non-empty list; a name may hold synonyms, "sofa, couch".

        Warns (UserWarning) about names too long for the text encoder, whose ends are cut off.

        Raises:
            ValueError: the list is empty, holds an empty name or one with a line break, or repeats a name.
            TypeError: a single string, None or another non-list was given instead of a list.
        """
        self._vocabulary = self._check_vocabulary(class_names)

    def _check_vocabulary(self, class_names: Sequence[str]) -> List[str]:
        names = check_vocabulary(class_names)
        warn_truncated_names(truncated_names(names, self._templates, self._tokenizer), stacklevel=3)
        return names

    def __call__(
        self,
        image_bgr: np.ndarray,
        vocabulary: Optional[Sequence[str]] = None,
        output: Optional[str] = None,
        top_k: Optional[int] = None,
        output_size: Optional[Tuple[int, int]] = None,
    ) -> Dict[str, np.ndarray]:
        """Segments one image.

        Args:
            image_bgr: [H, W, 3] uint8 in BGR order, as ``cv2.imread`` returns it; H and W at least 1.
            vocabulary: class names for this call only, checked as :meth:`set_vocabulary` checks them (the
                predictor's :attr:`vocabulary` is left unchanged, so that callers in several threads can each pass
                their own); default :attr:`vocabulary`. No length limit applies here: a service that takes names
                from its users checks them with ``check_vocabulary(names, VocabularyLimits())`` first
                (:mod:`esc_net_runtime.vocabulary_rules`).
            output: "scores" or "labels"; default the export's ``inference_output`` (its config's).
            top_k: with "labels", also return the k best classes per pixel; default the export's ``inference_top_k``.
            output_size: the (H, W) to predict at; default the image's.

        Returns:
            "scores": ``{"sem_seg": [N, H, W] float32}``, per-class scores in [0, 1] for the N names of the
            vocabulary used. "labels": ``{"sem_seg_labels": [H, W]}``, the index of the best class (uint8 up to
            255 classes, else int16), plus ``"sem_seg_topk_labels"`` and ``"sem_seg_topk_scores"`` (float16)
            [k, H, W] with ``top_k``; computed in bands, in working memory that does not grow with the image or the
            vocabulary. H, W as ``output_size``.

        Raises:
            ValueError: the image is not an [H, W, 3] uint8 array, is empty (a side of 0), no vocabulary is set,
                ``vocabulary`` is empty or holds an empty name, ``output`` is unknown, ``top_k`` is outside
                [0, N], ``output_size`` is not two positive integers, or the model's scores hold NaN.
            TypeError: ``vocabulary`` is a single string instead of a list, or holds a name that is not a string.
        """
        height, width = check_bgr_image(image_bgr)
        if vocabulary is None and self._vocabulary is None:
            raise ValueError("the predictor has no vocabulary: call set_vocabulary(names) or pass vocabulary=")
        vocabulary = self._vocabulary if vocabulary is None else self._check_vocabulary(vocabulary)
        output = self._metadata["inference_output"] if output is None else output
        top_k = self._metadata["inference_top_k"] if top_k is None else top_k
        if output not in OUTPUT_MODES:
            raise ValueError(f"the inference output must be one of {OUTPUT_MODES}, got {output!r}")
        check_top_k(top_k, len(vocabulary))
        if output_size is not None:
            height, width = check_output_size(output_size)
        text = self._class_embeddings(tuple(vocabulary))
        scores = self._score(self._normalized_input(image_bgr), text)
        return full_resolution_output(scores, (height, width), output, top_k)

    def _normalized_input(self, image_bgr: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 BGR -> [3, S, S] float32 RGB at the protocol's input size, normalised."""
        side = self._layout.size if self._sliding else self._layout.view_size
        image = resize_image(image_bgr, (side, side))[:, :, ::-1]  # resized first: no float copy of a large image
        return np.ascontiguousarray(((image - self._pixel_mean) / self._pixel_std).transpose(2, 0, 1))

    def _score(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        """[3, S, S] normalised image, [N, D] class embeddings -> [N, s, s] scores in [0, 1]."""
        inference = self._metadata["inference"]
        views = window_views(self._layout, image) if self._sliding else image[None]

        def score_views(group: np.ndarray) -> np.ndarray:
            feeds = {"views": np.ascontiguousarray(group), "class_embeddings": text}
            return self._image_scorer.run(["scores"], feeds)[0]

        scores = score_in_passes(
            score_views, views, len(text), inference["max_classes_per_view"], inference["view_classes_per_pass"]
        )
        return merge_windows(self._layout, scores) if self._sliding else scores[0]

    def _encode_text(self, class_names: Tuple[str, ...]) -> np.ndarray:
        """N class names -> [N, D] float32 unit-norm class embeddings, in runs of whole classes."""
        prompts, owners = prompt_list(class_names, self._templates, self._metadata["synonym_mode"])
        owners, per_synonym = np.asarray(owners), len(self._templates)
        first_synonym = np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=len(class_names)))])
        bounds, run = [0], 0
        for index, synonyms in enumerate(np.diff(first_synonym)):
            if run and run + synonyms * per_synonym > _PROMPTS_PER_TEXT_RUN:
                bounds.append(index)
                run = 0
            run += synonyms * per_synonym
        bounds.append(len(class_names))
        embeddings = []
        for start, stop in zip(bounds, bounds[1:]):
            synonyms = slice(first_synonym[start], first_synonym[stop])
            tokens = self._tokenizer(prompts[synonyms.start * per_synonym : synonyms.stop * per_synonym])
            one_hot = owners[synonyms][None, :] == np.arange(start, stop)[:, None]  # [classes, synonyms]
            feeds = {"tokens": tokens, "synonym_classes": one_hot.astype(np.float32)}
            embeddings.append(self._text_encoder.run(["class_embeddings"], feeds)[0])
        return np.concatenate(embeddings)
