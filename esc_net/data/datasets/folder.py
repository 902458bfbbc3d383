"""A dataset of one's own in one call: a folder of images, a folder of label maps, and the class names.

See docs/own_data.md for the layout and for training and evaluating on it.
"""

import functools
import os
from typing import Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from esc_net.data.datasets.complete_sem_seg import load_complete_sem_seg
from esc_net.utils.label_maps import ignore_value
from esc_net_runtime.vocabulary_rules import check_vocabulary, read_vocabulary_file

__all__ = ["register_sem_seg_folder"]


def register_sem_seg_folder(
    name: str,
    image_root: str,
    label_root: str,
    class_names: Union[Sequence[str], str],
    *,
    image_ext: str = "jpg",
    label_ext: str = "png",
    ignore_label: Optional[int] = None,
) -> None:
    """Registers the semantic segmentation dataset ``name`` with Detectron2's DatasetCatalog and MetadataCatalog.

    Every image ``<image_root>/<stem>.<image_ext>`` has its label map ``<label_root>/<stem>.<label_ext>``: a
    single-channel image (PNG; 16-bit PNG or TIFF beyond 255 classes) whose pixel value is the index of the pixel's
    class in ``class_names``, and ``ignore_label`` where a pixel has no class. A dataset with images without label
    maps (or the reverse) is refused when it is loaded, the files named (``DATASETS.ALLOW_INCOMPLETE`` uses the
    complete pairs only).

    The metadata are those the project's own datasets have: ``stuff_classes`` (the names, which are also the model's
    vocabulary for the dataset), ``ignore_label``, ``evaluator_type`` "sem_seg", ``image_root`` and
    ``sem_seg_root``. Name the dataset in ``DATASETS.TRAIN`` or ``DATASETS.TEST``.

    Args:
        name: the dataset's name in Detectron2's catalogs.
        image_root, label_root: the two folders.
        class_names: the names in label order (synonyms after commas: "sofa, couch"), or the path of a text file
            holding them one per line, line i naming label value i (blank and ``#`` lines skipped).
        image_ext, label_ext: the files' extensions, without the dot.
        ignore_label: the label value of pixels without a class; default 255 (65535 beyond 255 classes).

    Raises:
        FileNotFoundError: a folder or the file of class names does not exist.
        ValueError: the names break a rule of :func:`check_vocabulary`, ``ignore_label`` is a class's index, or
            ``name`` is registered already (``DatasetCatalog.remove(name)`` and ``MetadataCatalog.remove(name)``
            first, to register it anew).
    """
    names = check_vocabulary(read_vocabulary_file(class_names) if isinstance(class_names, str) else class_names)
    missing = [folder for folder in (image_root, label_root) if not os.path.isdir(folder)]
    if missing:
        raise FileNotFoundError(f"dataset {name!r}: no folder {' and '.join(missing)}")
    ignore_label = ignore_value(len(names)) if ignore_label is None else int(ignore_label)
    if 0 <= ignore_label < len(names):
        raise ValueError(
            f"dataset {name!r}: ignore_label {ignore_label} is the label of class {names[ignore_label]!r}; pixels "
            f"without a class need a value outside 0..{len(names) - 1}"
        )
    if name in DatasetCatalog.list():
        raise ValueError(
            f"a dataset named {name!r} is registered already: remove it from DatasetCatalog and MetadataCatalog "
            "first, or choose another name"
        )
    DatasetCatalog.register(
        name, functools.partial(load_complete_sem_seg, label_root, image_root, gt_ext=label_ext, image_ext=image_ext)
    )
    MetadataCatalog.get(name).set(
        stuff_classes=names,
        ignore_label=ignore_label,
        evaluator_type="sem_seg",
        image_root=image_root,
        sem_seg_root=label_root,
    )
