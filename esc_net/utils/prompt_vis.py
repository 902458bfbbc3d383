"""Pictures of the pseudo prompts: what each ESC-Block's Pseudo Prompt Generator (PPG) read and produced for one
class of one image.

:class:`PromptRecorder` captures, with forward pre-hooks on every ESC-Block, the correlation map the block's
generator reads ([B, N, h, w]) for one (image, class), and runs that block's generator on that one map for its
prompts and K-means clusters (the generator's output for a map does not depend on the rest of the batch, so they
are exactly the ones the block uses, although the block itself generates prompts a chunk of classes at a time).
:func:`draw_block_prompts` draws one block as a row of five panels: the input, the class's correlation map, its
kept region (the pixels the pseudo mask keeps), its K-means regions and its pseudo points over the pseudo mask.
"""

from typing import List, NamedTuple, Optional, Sequence

import cv2
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from esc_net_runtime.vocabulary_rules import split_synonyms

__all__ = [
    "BlockPrompts",
    "PromptRecorder",
    "dominant_class",
    "draw_block_prompts",
    "draw_image_prompts",
    "put_prompt_pictures",
]

_PANEL_INCHES = 2.4
_DPI = 100


class BlockPrompts(NamedTuple):
    """What one block's PPG read and produced for the recorded (image, class), on the CPU.

    Attributes:
        corr: [h, w] float32, the correlation (logit) map the generator read.
        points: [K, 2] float32 (x, y) grid cells of the pseudo points; only rows with label 1 are real.
        labels: [K] int64, 1 for a pseudo point, -1 for padding.
        mask: [h, w] float32 in [0, 1], the pseudo mask (zero outside the kept pixels).
        regions: [h, w] int64, the K-means cluster of every kept pixel, -1 elsewhere.
    """

    corr: torch.Tensor
    points: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    regions: torch.Tensor


class PromptRecorder:
    """Records every block's pseudo prompts for one (image, class) while the model runs, as a context manager.

    Only the first call of each block inside the context is kept (inference may run views in several
    passes; ``image_index`` indexes the first pass's batch).

    Example::

        with PromptRecorder(model.blocks, image_index=0, class_index=2) as recorder:
            model(inputs)
        recorder.records  # one BlockPrompts per block

    Args:
        blocks: the ESC-Blocks (each with a ``prompt_generator``).
        image_index: b, the image (view) of the generator's [B, N, h, w] input.
        class_index: n, the class.
    """

    def __init__(self, blocks: Sequence[nn.Module], image_index: int, class_index: int):
        self.blocks = list(blocks)
        self.image_index = image_index
        self.class_index = class_index
        self.records: List[Optional[BlockPrompts]] = [None] * len(self.blocks)
        self._handles = []

    def _hook(self, position: int):
        def hook(block, args, kwargs):
            corr = kwargs["corr_map"]  # ESCNet.refine calls every block with its map by name
            if self.records[position] is not None or corr is None:
                return
            B, N = corr.shape[:2]
            if not (0 <= self.image_index < B and 0 <= self.class_index < N):
                raise IndexError(
                    f"PromptRecorder: image {self.image_index}, class {self.class_index} is outside the "
                    f"block's input of {B} image(s) x {N} class(es)"
                )
            one = corr[self.image_index, self.class_index][None, None].detach()
            with torch.no_grad():
                posterior = block.prompt_generator.class_posterior(corr.detach())
                if posterior is not None:  # the mask reads the class's share among the whole vocabulary
                    posterior = posterior[self.image_index, self.class_index][None, None]
                prompts = block.prompt_generator(one, posterior)
                regions = block.prompt_generator.clusters(one)
            self.records[position] = BlockPrompts(
                corr=one[0, 0].float().cpu(),
                points=prompts.points[0].float().cpu(),
                labels=prompts.labels[0].cpu(),
                mask=prompts.masks[0, 0].float().cpu(),
                regions=regions[0].cpu(),
            )

        return hook

    def __enter__(self) -> "PromptRecorder":
        self.records = [None] * len(self.blocks)
        self._handles = [
            block.register_forward_pre_hook(self._hook(i), with_kwargs=True)
            for i, block in enumerate(self.blocks)
            if block.use_sam
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def dominant_class(labels: torch.Tensor, num_classes: int, ignore_value: int) -> int:
    """The class covering most labelled pixels of a [H, W] label map (0 when none is labelled)."""
    valid = labels[(labels != ignore_value) & (labels >= 0) & (labels < num_classes)]
    if valid.numel() == 0:
        return 0
    return int(torch.bincount(valid.flatten(), minlength=num_classes).argmax())


def _show_grid(ax, values: np.ndarray, extent, **kwargs):
    ax.imshow(values, extent=extent, interpolation="nearest", **kwargs)


def draw_block_prompts(image_rgb: np.ndarray, record: BlockPrompts, class_name: str, title: str) -> np.ndarray:
    """One block's pseudo prompts as a row of five panels.

    Args:
        image_rgb: [H, W, 3] uint8, the view the model saw (the grid cells map onto it evenly).
        record: the block's :class:`BlockPrompts`.
        class_name: the class (shown by its first synonym).
        title: the row's label (e.g. "block 1").

    Returns:
        [H', W', 3] uint8 RGB picture.
    """
    H, W = image_rgb.shape[:2]
    h, w = record.mask.shape
    extent = (0, W, H, 0)
    kept = (record.mask > 0).numpy()
    regions = record.regions.numpy()
    real = record.points[record.labels == 1].numpy()
    xs, ys = (real[:, 0] + 0.5) * W / w, (real[:, 1] + 0.5) * H / h  # cell centres in image pixels

    figure = Figure(figsize=(5 * _PANEL_INCHES, _PANEL_INCHES + 0.35), dpi=_DPI, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(1, 5)
    figure.suptitle(f"{title}: pseudo prompts of '{split_synonyms(class_name)[0]}'", fontsize=10)
    grey = image_rgb.mean(axis=2)  # the image in grey under the coloured maps

    axes[0].imshow(image_rgb)
    axes[0].set_title("input", fontsize=9)

    corr = record.corr.numpy()
    _show_grid(axes[1], corr, extent, cmap="viridis")
    axes[1].set_title(f"correlation [{corr.min():.2f}, {corr.max():.2f}]", fontsize=9)

    axes[2].imshow(grey, cmap="gray", vmin=0, vmax=255)
    _show_grid(axes[2], np.ma.masked_where(~kept, kept), extent, cmap="autumn", alpha=0.6, vmin=0, vmax=1)
    axes[2].set_title(f"kept region ({int(kept.sum())}/{h * w} cells)", fontsize=9)

    axes[3].imshow(grey, cmap="gray", vmin=0, vmax=255)
    palette = colormaps["tab10"]
    colours = palette(np.arange(max(len(real), 1)) % palette.N)
    region_rgba = np.zeros((h, w, 4))
    region_rgba[regions >= 0] = colours[regions[regions >= 0]]
    region_rgba[..., 3] = np.where(regions >= 0, 0.65, 0.0)
    _show_grid(axes[3], region_rgba, extent)
    axes[3].set_title(f"K-means regions ({len(real)})", fontsize=9)

    axes[4].imshow(grey, cmap="gray", vmin=0, vmax=255)
    mask = record.mask.numpy()
    _show_grid(axes[4], np.ma.masked_where(~kept, mask), extent, cmap="magma", alpha=0.7, vmin=0, vmax=1)
    axes[4].scatter(xs, ys, s=140, c=colours[: len(real)], marker="*", edgecolors="white", linewidths=0.8)
    for k, (x, y) in enumerate(zip(xs, ys)):
        axes[4].annotate(str(k + 1), (x, y), xytext=(4, 4), textcoords="offset points", color="white", fontsize=8)
    axes[4].set_title("pseudo points + mask", fontsize=9)

    for ax in axes:
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def put_prompt_pictures(view_rgb: np.ndarray, recorder: PromptRecorder, class_name: str) -> None:
    """Puts every block's picture of ``recorder``'s prompts into Detectron2's current EventStorage, as the images
    ``pseudo_prompts/block<i>`` (TensorBoard shows them).

    Args:
        view_rgb: [S, S, 3] uint8, the view the model saw.
    """
    from detectron2.utils.events import get_event_storage

    storage = get_event_storage()
    for i, record in enumerate(recorder.records):
        if record is None:  # a block without SAM draws no prompts
            continue
        picture = draw_block_prompts(view_rgb, record, class_name, f"block {i + 1}, iteration {storage.iter}")
        storage.put_image(f"pseudo_prompts/block{i + 1}", torch.from_numpy(picture).permute(2, 0, 1))


def draw_image_prompts(predictor, image_bgr: np.ndarray, class_index: int) -> np.ndarray:
    """Every block's pseudo prompts for one class of one image, one row per block.

    The image is run once more as a single whole-image view (the view the picture shows), whatever the model's
    inference mode.

    Args:
        predictor: an ``ESCNetPredictor`` with its vocabulary set.
        image_bgr: [H, W, 3] uint8 BGR image, as the predictor takes it.
        class_index: the class of ``predictor.vocabulary`` to draw.

    Returns:
        [H', W', 3] uint8 RGB picture.
    """
    model = predictor.model
    names = predictor.vocabulary
    if not any(block.use_sam for block in model.blocks):
        raise ValueError(
            "this model has no SAM blocks (MODEL.ESC_NET.USE_SAM_BLOCK False): there are no pseudo prompts to draw"
        )
    if not 0 <= class_index < len(names):
        raise IndexError(f"class index {class_index} is outside the vocabulary of {len(names)} classes")
    # One whole view, every class refined (a class cap would hand the blocks a subset of the vocabulary).
    previous = model.inference
    model.inference = previous.replace(mode="whole", max_classes_per_view=0)
    try:
        with PromptRecorder(model.blocks, image_index=0, class_index=class_index) as recorder:
            predictor(image_bgr)
    finally:
        model.inference = previous
    side = model.image_size
    view = cv2.resize(image_bgr, (side, side), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    rows = [
        draw_block_prompts(view, record, names[class_index], f"block {i + 1}")
        for i, record in enumerate(recorder.records)
    ]
    return np.concatenate(rows, axis=0)
