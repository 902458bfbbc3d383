"""The Synthetic Shapes world on disk: generation, loading and Detectron2 registration.

Layout under ``$DETECTRON2_DATASETS`` (default ``./datasets``)::

    synthetic_shapes/
        manifest.json                          # the generation options; written last: it marks a finished dataset
        images/<split>/00000.png               # RGB images
        labels/<split>/00000.png               # uint8 label maps: indices into that split's vocabulary, 255 = ignore

with one split per entry of :data:`~esc_net.data.synthetic_shapes.world.BENCHMARKS`: ``train`` (seen objects, the
seen vocabulary), ``val`` (the same, held out), ``val_unseen`` (unseen objects; the unseen names and the
textures) and ``val_all`` (every object; every name). ``num_val`` images are written for each validation split.

Generation (``esc-net-prepare synthetic_shapes`` or :func:`generate_synthetic_shapes`) is deterministic: image
``i`` of a split depends only on the seed, the split and ``i``, not on the counts. A second run with the same
options finds the manifest and every file, and skips; a run with other options refuses to touch the existing
dataset unless ``overwrite=True`` (``--overwrite``), in which case it regenerates in place and deletes leftover
files of the old run.

Importing this package registers ``synthetic_shapes_<split>`` for every split with Detectron2 (no disk access: the
dataset root is resolved when a dataset is loaded).
"""

import functools
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from tqdm import tqdm

from esc_net.data.datasets.complete_sem_seg import load_complete_sem_seg
from esc_net.data.paths import dataset_root
from esc_net.data.synthetic_shapes.render import IGNORE_LABEL, check_options, render_sample, sample_rng
from esc_net.data.synthetic_shapes.world import ALL_CLASSES, BENCHMARKS, Benchmark, class_color
from esc_net.utils.image_writers import write_label_png, write_rgb_image

logger = logging.getLogger(__name__)

DATASET_DIRNAME = "synthetic_shapes"
SPLITS = tuple(b.split for b in BENCHMARKS)
GENERATE_COMMAND = "esc-net-prepare synthetic_shapes"
# Bump when the drawing or the classes change, so that an old dataset on disk is not mistaken for a current one.
FORMAT_VERSION = 2

DEFAULT_NUM_IMAGES = {"train": 5000, "val": 60}
DEFAULT_IMAGE_SIZE = 64
DEFAULT_MAX_SHAPES = 3
DEFAULT_IGNORE_BAND = 1


def benchmark(split: str) -> Benchmark:
    """The entry of BENCHMARKS for ``split``."""
    for entry in BENCHMARKS:
        if entry.split == split:
            return entry
    raise KeyError(f"synthetic_shapes has no split {split!r}; its splits are {list(SPLITS)}")


def to_vocabulary_ids(label: np.ndarray, vocabulary) -> np.ndarray:
    """A label map of ALL_CLASSES ids -> ids into ``vocabulary`` (IGNORE_LABEL kept).

    Raises:
        ValueError: the map holds a class that ``vocabulary`` lacks.
    """
    lookup = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    lookup[[ALL_CLASSES.index(name) for name in vocabulary]] = np.arange(len(vocabulary), dtype=np.uint8)
    mapped = lookup[label]
    lost = (mapped == IGNORE_LABEL) & (label != IGNORE_LABEL)
    if lost.any():
        missing = sorted({ALL_CLASSES[i] for i in np.unique(label[lost])})
        raise ValueError(f"the label map holds classes {missing} that the vocabulary lacks")
    return mapped


def render_split_sample(seed: int, split: str, index: int, image_size: int, max_shapes: int, ignore_band: int):
    """Image ``index`` of ``split`` as it is written: (RGB image, label map of ids into the split's vocabulary)."""
    entry = benchmark(split)
    sample = render_sample(sample_rng(seed, split, index), entry.objects, image_size, max_shapes, ignore_band)
    return sample.image, to_vocabulary_ids(sample.label, entry.vocabulary)


def split_dirs(root: Optional[str], split: str) -> Tuple[str, str]:
    """(image folder, label folder) of ``split`` under :func:`~esc_net.data.paths.dataset_root` of ``root``."""
    base = os.path.join(dataset_root(root), DATASET_DIRNAME)
    return os.path.join(base, "images", split), os.path.join(base, "labels", split)


def manifest_path(root: Optional[str]) -> str:
    """The manifest of the dataset under the dataset root; it exists only once generation has finished."""
    return os.path.join(dataset_root(root), DATASET_DIRNAME, "manifest.json")


def _file_names(count: int) -> List[str]:
    return [f"{i:05d}.png" for i in range(count)]


def _split_counts(options: Dict) -> Dict[str, int]:
    return {split: options["num_train"] if split == "train" else options["num_val"] for split in SPLITS}


def _read_manifest(root: Optional[str]) -> Dict:
    with open(manifest_path(root)) as f:
        return json.load(f)


def _is_complete(root: str, options: Dict) -> bool:
    """Whether ``root`` holds a finished dataset generated with ``options`` (raises if with other options)."""
    if not os.path.isfile(manifest_path(root)):
        return False
    existing = _read_manifest(root)
    if existing != options:
        changed = sorted(k for k in set(existing) | set(options) if existing.get(k) != options.get(k))
        details = ", ".join(f"{k}: {existing.get(k)!r} -> {options.get(k)!r}" for k in changed)
        raise FileExistsError(
            f"{os.path.join(root, DATASET_DIRNAME)} holds a synthetic_shapes dataset generated with other options "
            f"({details}); pass --overwrite (overwrite=True) to regenerate it in place, or choose another root"
        )
    return all(
        os.path.isfile(os.path.join(folder, name))
        for split, count in _split_counts(options).items()
        for folder in split_dirs(root, split)
        for name in _file_names(count)
    )


def generate_synthetic_shapes(
    root: Optional[str] = None,
    num_train: int = DEFAULT_NUM_IMAGES["train"],
    num_val: int = DEFAULT_NUM_IMAGES["val"],
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    max_shapes: int = DEFAULT_MAX_SHAPES,
    ignore_band: int = DEFAULT_IGNORE_BAND,
    overwrite: bool = False,
) -> str:
    """Writes the dataset under ``<root>/synthetic_shapes`` (layout in the module docstring) and returns that path.

    ``root`` defaults to ``$DETECTRON2_DATASETS`` or ``./datasets``. ``num_val`` images are written for each
    validation split. Skips the work when a complete dataset with the same options is already there; raises
    ``FileExistsError`` when one with other options is there, unless ``overwrite``. A dataset without a manifest
    (an interrupted run) is regenerated.
    """
    check_options(image_size, max_shapes, ignore_band)
    for name, count in (("num_train", num_train), ("num_val", num_val)):
        if count < 1:
            raise ValueError(f"{name} must be at least 1, got {count}")
    root = dataset_root(root)
    base = os.path.join(root, DATASET_DIRNAME)
    options = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "max_shapes": max_shapes,
        "ignore_band": ignore_band,
        "vocabularies": {b.split: list(b.vocabulary) for b in BENCHMARKS},
    }
    if not overwrite and _is_complete(root, options):
        logger.info(f"{base} is already complete with these options; nothing to do")
        return base
    # From here until the new manifest is written, the folder does not count as a finished dataset.
    if os.path.isfile(manifest_path(root)):
        os.remove(manifest_path(root))

    for split, count in _split_counts(options).items():
        image_dir, label_dir = split_dirs(root, split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        names = _file_names(count)
        for i, name in enumerate(tqdm(names, desc=f"synthetic_shapes {split}", unit="img")):
            image, label = render_split_sample(seed, split, i, image_size, max_shapes, ignore_band)
            write_rgb_image(os.path.join(image_dir, name), image)
            write_label_png(os.path.join(label_dir, name), label)
        # Files of an earlier, larger run would otherwise be loaded as part of this dataset.
        expected = set(names)
        for folder in (image_dir, label_dir):
            for stale in sorted(set(os.listdir(folder)) - expected):
                os.remove(os.path.join(folder, stale))
    with open(manifest_path(root), "w") as f:
        json.dump(options, f, indent=2)
    logger.info(f"wrote synthetic_shapes ({num_train} train, {num_val} per validation split, {image_size}px) to {base}")
    return base


def load_synthetic_shapes(split: str, root: Optional[str] = None) -> List[Dict]:
    """Detectron2 dataset dicts (``file_name``, ``sem_seg_file_name``) of ``split``, via ``load_sem_seg``; an
    incomplete split (an image without its label map or the reverse, or fewer images than the manifest lists)
    raises IncompleteDatasetError."""
    image_dir, label_dir = split_dirs(root, split)
    for path in (image_dir, label_dir, manifest_path(root)):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"synthetic_shapes {split} split: {path} does not exist (expected "
                f"{DATASET_DIRNAME}/{{images,labels}}/{{{','.join(SPLITS)}}}/*.png and {DATASET_DIRNAME}/manifest.json "
                f"under {os.path.abspath(dataset_root(root))}); generate it with `{GENERATE_COMMAND}`"
                + ("" if root else " (it writes under $DETECTRON2_DATASETS, default ./datasets)")
            )
    count = _split_counts(_read_manifest(root))[split]
    return load_complete_sem_seg(
        label_dir,
        image_dir,
        gt_ext="png",
        image_ext="png",
        manifest=manifest_path(root),
        listed_images=_file_names(count),
    )


def register_synthetic_shapes(root: Optional[str] = None) -> None:
    """Registers ``synthetic_shapes_<split>`` of every split in Detectron2's DatasetCatalog and MetadataCatalog.

    Touches no file. With ``root=None`` the loader resolves ``$DETECTRON2_DATASETS`` when the dataset is loaded;
    the ``image_root`` / ``sem_seg_root`` metadata are informative and hold the folders as resolved now. Besides
    Detectron2's keys, the metadata hold ``vocabulary`` (the names scored) and ``class_groups`` (which of them are
    seen and unseen in segmentation training; the benchmark table reports the mIoU of each group).
    """
    for entry in BENCHMARKS:
        DatasetCatalog.register(entry.dataset_name, functools.partial(load_synthetic_shapes, entry.split, root))
        image_dir, label_dir = split_dirs(root, entry.split)
        MetadataCatalog.get(entry.dataset_name).set(
            stuff_classes=list(entry.vocabulary),
            vocabulary=list(entry.vocabulary),
            stuff_colors=[class_color(name) for name in entry.vocabulary],
            class_groups=entry.groups,
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
            image_root=image_dir,
            sem_seg_root=label_dir,
            benchmark=entry.title,
        )
