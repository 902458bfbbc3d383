"""Detectron2's ``load_sem_seg`` for datasets that must be complete: every image has its label map and every
label map its image, or the dataset is refused with the files named.

``load_sem_seg`` pairs the two folders' files by name, and when their counts differ it only warns and keeps the
intersection: a validation image whose label map is missing would be left out of the mIoU without anyone
noticing. An image deleted together with its label map leaves no trace in the folders at all; a dataset that
keeps a manifest of its files (Synthetic Shapes) says what should be there. :func:`load_complete_sem_seg` refuses
such a dataset instead, unless the caller accepts incomplete ones
(:func:`incomplete_datasets_allowed`; ``DATASETS.ALLOW_INCOMPLETE`` in a config), in which case it keeps the pairs
that match, says how many, and the evaluation reports how many images it scored.
"""

import contextlib
import contextvars
import logging
import os
from typing import Iterator, List, Optional, Sequence

from detectron2.data.datasets import load_sem_seg
from detectron2.utils.file_io import PathManager

__all__ = ["IncompleteDatasetError", "incomplete_datasets_allowed", "load_complete_sem_seg"]

logger = logging.getLogger(__name__)

# Files named in a message, at most; the count of the others follows.
_NAMED_FILES = 20
_ALLOW_INCOMPLETE = contextvars.ContextVar("esc_net_allow_incomplete_datasets", default=False)


class IncompleteDatasetError(FileNotFoundError):
    """Images without label maps, or label maps without images. The message names them."""


@contextlib.contextmanager
def incomplete_datasets_allowed(allowed: bool = True) -> Iterator[None]:
    """Within this block (this thread or task), :func:`load_complete_sem_seg` keeps the matching pairs of an
    incomplete dataset, with a warning, instead of refusing it."""
    token = _ALLOW_INCOMPLETE.set(allowed)
    try:
        yield
    finally:
        _ALLOW_INCOMPLETE.reset(token)


def _stems(folder: str, ext: str) -> List[str]:
    # load_sem_seg's own matching key: the file name without the extension given
    return [name[: -len(ext)] for name in PathManager.ls(folder) if name.endswith(ext)]


def _listing(folder: str, stems: List[str], ext: str) -> str:
    named = ", ".join(os.path.join(folder, stem + ext) for stem in stems[:_NAMED_FILES])
    return named + (f" and {len(stems) - _NAMED_FILES} more" if len(stems) > _NAMED_FILES else "")


def load_complete_sem_seg(
    gt_root: str,
    image_root: str,
    gt_ext: str = "png",
    image_ext: str = "jpg",
    labels_select_images: bool = False,
    manifest: Optional[str] = None,
    listed_images: Sequence[str] = (),
) -> List[dict]:
    """``load_sem_seg(gt_root, image_root, gt_ext, image_ext)`` of a complete dataset.

    Args:
        labels_select_images: the image folder also holds other splits' images (VOC's ``JPEGImages``), so the
            label maps say which images belong here: only label maps without an image make it incomplete.
        manifest, listed_images: the dataset's own record of what it holds, when it keeps one: the file names
            (in ``image_root``) of the images that ``manifest`` lists. One of them missing together with its label
            map leaves the two folders consistent with each other, but the dataset incomplete all the same.

    Returns:
        Detectron2's dicts (``file_name``, ``sem_seg_file_name``), one per image and label map with the same name.

    Raises:
        IncompleteDatasetError: naming the images without label maps, the label maps without images and the listed
            images missing with their label maps (unless :func:`incomplete_datasets_allowed`).
    """
    images, labels = set(_stems(image_root, image_ext)), set(_stems(gt_root, gt_ext))
    unlabelled = [] if labels_select_images else sorted(images - labels)
    orphans = sorted(labels - images)
    listed = {name[: -len(image_ext)] for name in listed_images if name.endswith(image_ext)}
    lost = sorted(listed - images - labels)
    if unlabelled or orphans or lost:
        problems = []
        if unlabelled:
            problems.append(
                f"{len(unlabelled)} image(s) without a label map in {gt_root}: "
                + _listing(image_root, unlabelled, image_ext)
            )
        if orphans:
            problems.append(
                f"{len(orphans)} label map(s) without an image in {image_root}: " + _listing(gt_root, orphans, gt_ext)
            )
        if lost:
            problems.append(
                f"{len(lost)} image(s) that {manifest} lists missing, with their label maps in {gt_root}: "
                + _listing(image_root, lost, image_ext)
            )
        matched = len(images & labels)
        if not _ALLOW_INCOMPLETE.get():
            raise IncompleteDatasetError(
                f"incomplete dataset: {'; '.join(problems)}. Restore the missing files, or set "
                f"DATASETS.ALLOW_INCOMPLETE True to use only the {matched} complete pairs"
            )
        logger.warning(
            f"incomplete dataset (DATASETS.ALLOW_INCOMPLETE): using only the {matched} complete pairs; "
            + "; ".join(problems)
        )
    records = load_sem_seg(gt_root, image_root, gt_ext=gt_ext, image_ext=image_ext)
    # load_sem_seg pairs the sorted lists by position when the two counts are equal, even if their names differ
    # (possible once files are missing on both sides): keep the pairs whose names match.
    return [
        r
        for r in records
        if os.path.basename(r["file_name"])[: -len(image_ext)]
        == os.path.basename(r["sem_seg_file_name"])[: -len(gt_ext)]
    ]
