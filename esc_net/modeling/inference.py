"""Inference orchestration: how an image becomes views, which classes each view refines, how views are grouped
into passes, and how their scores merge back into one map per image. Where the sliding windows lie is
:mod:`esc_net_runtime.sliding_window`'s (shared with the ONNX runtime).
"""

from typing import Optional

import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from esc_net.utils.arguments import check_choice, check_minimum
from esc_net_runtime.protocol import INFERENCE_MODES
from esc_net_runtime.sliding_window import SlidingWindowLayout


class SlidingWindow(SlidingWindowLayout):
    """The views and the merge of :class:`~esc_net_runtime.sliding_window.SlidingWindowLayout` on tensors."""

    def views(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, size, size] -> [B * num_views, 3, view_size, view_size] (windows, then the global
        view)."""
        w, v = self.window, self.view_size
        crops = torch.stack([images[:, :, y : y + w, x : x + w] for y, x in self.offsets], dim=1).flatten(0, 1)
        if v != w:
            crops = F.interpolate(crops, size=(v, v), mode="bilinear", align_corners=False)
        whole = F.interpolate(images, size=(v, v), mode="bilinear", align_corners=False)
        return torch.cat((crops.unflatten(0, (len(images), -1)), whole[:, None]), dim=1).flatten(0, 1)

    def merge(self, scores: torch.Tensor) -> torch.Tensor:
        """scores: [B * num_views, N, out_window, out_window] -> [B, N, S, S], S = size * out_window / window.

        The windows are averaged where they overlap; that map and the upsampled global view count equally.
        """
        scores = scores.unflatten(0, (-1, self.num_views))
        B, _, N = scores.shape[:3]
        side, ow = self.out_side, self.out_window
        total = scores.new_zeros(B, N, side, side)
        count = scores.new_zeros(1, 1, side, side)
        for i, (y, x) in enumerate(self.out_offsets):
            total[:, :, y : y + ow, x : x + ow] += scores[:, i]
            count[:, :, y : y + ow, x : x + ow] += 1
        global_view = F.interpolate(scores[:, -1], size=(side, side), mode="bilinear", align_corners=False)
        return (total / count + global_view) / 2


class InferenceProtocol:
    """The inference protocol of ESC-Net: views, the class cap, passes over views, and the merge.

    A protocol is a value: change a setting with :meth:`replace`, which returns a new one. Its geometry
    (``image_size``, ``out_size``) is the model's: ``ESCNet`` sets it from its backbone and decoder.

    ``score(model, images, text)`` asks ``model`` for three things only: ``model.encode_image(views)``,
    ``model.correlation(dense, text)`` and ``model.refine(corr, dense, skips, text)`` (see ``ESCNet``).

    Args:
        mode: "sliding" (windows of the resized image plus one global view, scores averaged) or "whole" (one view).
        sliding_resize: side of the square image the sliding windows are cut from.
        sliding_window: side of the windows in pixels of the resized image (0: ``image_size``). Each window is
            resized to ``image_size``, so a ViT-L/14 at 336 reads the same 384 windows of a 640 image as a
            ViT-B/16 at 384.
        sliding_overlap: minimum overlap of neighbouring windows, as a fraction of a window.
        max_classes_per_view: refine at most this many classes per view (the top K by CLIP correlation); the
            others are scored by their plain correlation below every refined class. 0 = no cap.
        view_classes_per_pass: views are refined in passes of at most max(1, this // N) views (N capped by
            ``max_classes_per_view``), which bounds memory without changing any score. 0 = one pass.
        image_size: side of the model's input views (the CLIP input size); None until the model sets it.
        out_size: side of the score map of one view (the decoder's output); None until the model sets it.
    """

    @configurable
    def __init__(
        self,
        *,
        mode: str,
        sliding_resize: int,
        sliding_window: int,
        sliding_overlap: float,
        max_classes_per_view: int,
        view_classes_per_pass: int,
        image_size: Optional[int] = None,
        out_size: Optional[int] = None,
    ):
        check_choice("MODEL.ESC_NET.INFERENCE_MODE", mode, INFERENCE_MODES)
        check_minimum("MODEL.ESC_NET.MAX_CLASSES_PER_VIEW", max_classes_per_view, 0)
        check_minimum("MODEL.ESC_NET.VIEW_CLASSES_PER_PASS", view_classes_per_pass, 0)
        self._settings = dict(
            mode=mode,
            sliding_resize=sliding_resize,
            sliding_window=sliding_window,
            sliding_overlap=sliding_overlap,
            max_classes_per_view=max_classes_per_view,
            view_classes_per_pass=view_classes_per_pass,
            image_size=image_size,
            out_size=out_size,
        )
        self.mode = mode
        self.image_size = image_size
        self.out_size = out_size
        self.max_classes_per_view = max_classes_per_view
        self.view_classes_per_pass = view_classes_per_pass
        self.sliding_window = None
        if image_size is not None and out_size is not None:
            self.sliding_window = SlidingWindow(
                sliding_resize, sliding_window or image_size, out_size, sliding_overlap, view_size=image_size
            )

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.ESC_NET
        return {
            "mode": m.INFERENCE_MODE,
            "sliding_resize": m.SLIDING_RESIZE,
            "sliding_window": m.SLIDING_WINDOW,
            "sliding_overlap": m.SLIDING_OVERLAP,
            "max_classes_per_view": m.MAX_CLASSES_PER_VIEW,
            "view_classes_per_pass": m.VIEW_CLASSES_PER_PASS,
        }

    def replace(self, **changes) -> "InferenceProtocol":
        """A new protocol with some settings changed (e.g. ``replace(mode="whole", max_classes_per_view=0)``)."""
        return InferenceProtocol(**{**self._settings, **changes})

    @property
    def settings(self) -> dict:
        """The protocol's constructor arguments except its geometry (``image_size``, ``out_size``), which the model
        sets: what a runtime outside PyTorch needs to run the same protocol."""
        return {k: v for k, v in self._settings.items() if k not in ("image_size", "out_size")}

    def _geometry(self) -> "SlidingWindow":
        if self.sliding_window is None:
            raise ValueError(
                "this inference protocol has no geometry yet: a model sets it (ESCNet), or give image_size and out_size"
            )
        return self.sliding_window

    @property
    def input_size(self) -> int:
        """Side of the square image that :meth:`score` takes."""
        return self._geometry().size if self.mode == "sliding" else self._geometry().view_size

    @property
    def num_views(self) -> int:
        """Views the model refines per image."""
        return self._geometry().num_views if self.mode == "sliding" else 1

    def score(self, model: nn.Module, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Per-class scores of normalised images.

        Args:
            images: [B, 3, input_size, input_size]; text: [N, D] unit-norm class embeddings.
        Returns:
            [B, N, S, S] scores in [0, 1] (S: the view's score size, or the merged sliding-window map's).
        """
        if self.mode == "whole":
            return self._score_in_passes(model, images, text)
        window = self._geometry()
        return window.merge(self._score_in_passes(model, window.views(images), text))

    def _score_in_passes(self, model: nn.Module, views: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """:meth:`score_views` over groups of views sized by ``view_classes_per_pass``."""
        if not self.view_classes_per_pass:
            return self.score_views(model, views, text)
        refined_classes = min(len(text), self.max_classes_per_view or len(text))  # what a view's memory scales with
        per_pass = max(1, self.view_classes_per_pass // refined_classes)
        return torch.cat([self.score_views(model, group, text) for group in views.split(per_pass)])

    def score_views(self, model: nn.Module, views: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Per-class scores of a batch of normalised views, with the class cap.

        Args:
            views: [V, 3, image_size, image_size]; text: [N, D].
        Returns:
            [V, N, out_size, out_size] scores in [0, 1].
        """
        dense, skips = model.encode_image(views)
        corr = model.correlation(dense, text)
        K = self.max_classes_per_view
        if not K or len(text) <= K:
            return model.refine(corr, dense, skips, text.expand(len(views), -1, -1))[0].sigmoid()
        return self._score_top_classes(model, corr, dense, skips, text, K)

    def score_views_traceable(self, model: nn.Module, views: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """:meth:`score_views` as one graph for any class count N (what ``esc-net-export`` exports).

        With a class cap K, a graph cannot choose between refining every class (N <= K) and the top K: it always
        refines the top min(K, N). For N <= K those are every class, refined in the order of their correlation
        instead of the vocabulary's; the blocks treat the classes of a view alike whatever their order, so the
        scores equal :meth:`score_views`' up to float rounding.
        """
        dense, skips = model.encode_image(views)
        corr = model.correlation(dense, text)
        K = self.max_classes_per_view
        if not K:
            # views.shape[0], not len(views): len() makes a Python int of the traced view count
            return model.refine(corr, dense, skips, text.expand(views.shape[0], -1, -1))[0].sigmoid()
        # text.shape[0], not len(text): len() makes a Python int of the traced class count
        return self._score_top_classes(model, corr, dense, skips, text, torch.sym_min(text.shape[0], K))

    @staticmethod
    def _score_top_classes(model, corr, dense, skips, text, K) -> torch.Tensor:
        """Refines only the K classes most correlated with each view; the others keep their plain correlation,
        rescaled below the lowest refined score at each pixel so that they never outrank a refined class.

        Args:
            corr: [V, N, h, w]; dense, skips: the views' features; text: [N, D]; K: at most N.
        Returns:
            [V, N, out_size, out_size] scores in [0, 1].
        """
        top = corr.flatten(2).amax(dim=2).topk(K, dim=1).indices  # [V, K]
        h, w = corr.shape[-2:]
        top_corr = corr.gather(1, top[:, :, None, None].expand(-1, -1, h, w))
        refined = model.refine(top_corr, dense, skips, text[top])[0].sigmoid()  # [V, K, out, out]
        plain = F.interpolate(corr, size=refined.shape[-2:], mode="bilinear", align_corners=False)
        scores = (plain + 1) / 2 * refined.amin(dim=1, keepdim=True)
        return scores.scatter(1, top[:, :, None, None].expand_as(refined), refined.to(scores.dtype))
