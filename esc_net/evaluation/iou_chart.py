"""Per-class IoU bar chart of an evaluation, one panel per benchmark (``per_class_iou.png``)."""

import math
from typing import Dict, List, Sequence, Tuple

from detectron2.utils.file_io import PathManager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["MAX_BARS", "iou_chart", "write_iou_chart"]

# A panel shows every class up to this many; larger vocabularies (A-847, PC-459) show the best and the worst
# MAX_BARS // 2 classes, which is what a reader looks for, and say how many lie between.
MAX_BARS = 60
_BAR_HEIGHT_INCHES = 0.17
_PANEL_WIDTH_INCHES = 7.0


def _bars(iou: Dict[str, float]) -> Tuple[List[Tuple[str, float]], int]:
    """The (class, IoU) pairs drawn, best first, and the number of classes left out between the two halves.

    Classes absent from the ground truth (NaN IoU) have no IoU and are not drawn."""
    ranked = sorted(((c, v) for c, v in iou.items() if not math.isnan(v)), key=lambda cv: -cv[1])
    if len(ranked) <= MAX_BARS:
        return ranked, 0
    half = MAX_BARS // 2
    return ranked[:half] + ranked[-half:], len(ranked) - 2 * half


def iou_chart(panels: Sequence[Tuple[str, float, Dict[str, float]]]) -> Figure:
    """A figure with one horizontal bar chart per benchmark.

    Args:
        panels: ``(title, mIoU, {class: IoU})`` per benchmark, values in percent (NaN for classes absent from
            the ground truth).

    Returns:
        A matplotlib ``Figure`` (Agg canvas, no pyplot state); panel i is ``figure.axes[i]``, with the classes
        as y tick labels from the best (top) to the worst, and the mIoU as a dashed vertical line.
    """
    drawn = [_bars(iou) for _, _, iou in panels]
    rows = max(len(bars) + (1 if gap else 0) for bars, gap in drawn) if drawn else 1
    height = 1.2 + _BAR_HEIGHT_INCHES * max(rows, 5)
    figure = Figure(figsize=(_PANEL_WIDTH_INCHES * max(len(panels), 1), height), layout="constrained")
    FigureCanvasAgg(figure)
    for i, ((title, miou, iou), (bars, gap)) in enumerate(zip(panels, drawn)):
        ax = figure.add_subplot(1, len(panels), i + 1)
        names = [c for c, _ in bars]
        values = [v for _, v in bars]
        positions = list(range(len(bars)))
        if gap:
            # one empty row between the best and the worst half, labelled with what it stands for
            half = len(bars) // 2
            positions = positions[:half] + [p + 1 for p in positions[half:]]
            ax.text(50, half, f"... {gap} classes in between ...", ha="center", va="center", fontsize=8)
        ax.barh(positions, values, color="tab:blue", height=0.8)
        ax.set_yticks(positions, names, fontsize=7)
        # the best class on top; every panel spans the rows of the longest, so bars have one height throughout
        ax.set_ylim(rows - 0.4, -0.6)
        ax.set_xlim(0, 100)
        ax.axvline(miou, color="tab:red", linestyle="--", linewidth=1, label=f"mIoU {miou:.1f}")
        ax.legend(loc="lower right", fontsize=8)
        absent = sum(math.isnan(v) for v in iou.values())
        note = f"; {absent} absent from the ground truth" if absent else ""
        ax.set_title(f"{title}: {len(iou)} classes{note}", fontsize=9)
        ax.set_xlabel("IoU (%)")
    return figure


def write_iou_chart(panels: Sequence[Tuple[str, float, Dict[str, float]]], path: str, dpi: int = 100) -> None:
    """Draws :func:`iou_chart` and writes it as a PNG to ``path``."""
    figure = iou_chart(panels)
    with PathManager.open(path, "wb") as f:
        figure.savefig(f, format="png", dpi=dpi)
