"""Synthetic Shapes: a small open-vocabulary segmentation dataset generated on the fly (the embedded default).

It lets the whole pipeline (train, evaluate, demo) run on a CPU without any download. Each image is a textured
background (smooth noise, stripes or a linear gradient between two muted colours) with 1 to ``max_shapes``
shapes pasted on it at random positions, sizes and rotations; later shapes may overlap earlier ones. Every
(colour, kind) pair is a class named in words, so that a text encoder can score it::

    0 background, 1 red circle, 2 red square, 3 red triangle, 4 green circle, ..., 9 blue triangle

Shape colours are jittered per shape (and the whole image gets mild pixel noise), so the task is not a lookup
of exact pixel values.

Layout under ``$DETECTRON2_DATASETS`` (default ``./datasets``)::

    synthetic_shapes/
        manifest.json                  # the generation options; written last, so it marks a complete dataset
        images/{train,val}/00000.png   # RGB images
        labels/{train,val}/00000.png   # uint8 label maps: the class id above, 255 = ignore

Label maps hold 255 on a band of ``ignore_band`` pixels on each side of every boundary between two classes
(default 1, so a 2 px band): images are drawn anti-aliased, so boundary pixels mix two classes' colours and
have no single correct label. ``ignore_band=0`` labels every pixel.

Generation (``datasets/generate_synthetic_shapes.py`` or :func:`generate_synthetic_shapes`) is deterministic:
image ``i`` of a split depends only on the seed, the split and ``i``, not on the counts. A second run with the
same options finds the manifest and every file, and skips; a run with other options refuses to touch the
existing dataset unless ``overwrite=True`` (``--overwrite``), in which case it regenerates in place and deletes
leftover files of the old run.

Importing this module registers ``synthetic_shapes_train`` and ``synthetic_shapes_val`` with Detectron2 (no disk
access: the dataset root is resolved when the dataset is loaded).
"""
import functools
import json
import logging
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from tqdm import tqdm

from esc_net.data.datasets.complete_sem_seg import load_complete_sem_seg
from esc_net.data.paths import dataset_root
from esc_net.data.prepare.common import write_label_png, write_rgb_image
from esc_net.utils.label_maps import ignore_value

logger = logging.getLogger(__name__)

DATASET_DIRNAME = "synthetic_shapes"
SPLITS = ("train", "val")
GENERATE_COMMAND = "esc-net-prepare synthetic_shapes"
# Bump when the drawing changes, so that an old dataset on disk is not mistaken for a current one.
FORMAT_VERSION = 1

# Nominal RGB of each shape colour; each shape gets its own jittered version.
SHAPE_COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (205, 45, 45),
    "green": (50, 170, 60),
    "blue": (45, 80, 210),
}
# Polygon vertex count of each kind; 0 = a circle.
SHAPE_KINDS: Dict[str, int] = {"circle": 0, "square": 4, "triangle": 3}
SYNTHETIC_SHAPES_CLASSES: List[str] = ["background"] + [
    f"{color} {kind}" for color in SHAPE_COLORS for kind in SHAPE_KINDS
]
# Visualizer colours: the shape colour at three brightness levels (one per kind), grey for the background.
_KIND_BRIGHTNESS = (1.0, 0.6, 1.35)
SYNTHETIC_SHAPES_COLORS: List[List[int]] = [[128, 128, 128]] + [
    [int(min(255, round(c * b))) for c in rgb] for rgb in SHAPE_COLORS.values() for b in _KIND_BRIGHTNESS
]
IGNORE_LABEL = ignore_value(len(SYNTHETIC_SHAPES_CLASSES))

DEFAULT_NUM_IMAGES = {"train": 240, "val": 60}
DEFAULT_IMAGE_SIZE = 96
DEFAULT_MAX_SHAPES = 4
DEFAULT_IGNORE_BAND = 1

# Circumradius range of a shape, as a fraction of the image side.
_RADIUS_RANGE = (0.10, 0.22)
# 5 circles of the largest radius cover at most 5 * pi * 0.22^2 = 76% of the image, so some background
# always stays visible.
_MAX_SHAPES_LIMIT = 5
_MIN_IMAGE_SIZE = 32
_MAX_IGNORE_BAND = 3
_COLOR_JITTER = 30  # +- per channel, on 0..255
_PIXEL_NOISE_STD = 5.0
# cv2 drawing with sub-pixel coordinates: they are given as integers scaled by 2**_SHIFT.
_SHIFT = 4


class Shape(NamedTuple):
    """One pasted shape: contiguous class id, centre (x, y) in pixels, circumradius in pixels, rotation."""

    class_id: int
    center: Tuple[float, float]
    radius: float
    angle: float


def _muted_colors(rng: np.random.Generator, n: int) -> np.ndarray:
    """n low-saturation RGB colours [n, 3] float: a grey level with a small tint per channel."""
    grey = rng.uniform(60.0, 190.0, size=(n, 1))
    return grey + rng.uniform(-18.0, 18.0, size=(n, 3))


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background [size, size, 3] float32 (RGB, 0..255).

    A mixing field t in [0, 1] (smooth noise, stripes or a linear gradient, picked at random) blends two muted
    colours: background = c0 + t * (c1 - c0).
    """
    coords = np.arange(size, dtype=np.float32)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    theta = rng.uniform(0.0, 2.0 * np.pi)
    along = xs * np.cos(theta) + ys * np.sin(theta)  # [size, size], distance along a random direction
    texture = rng.integers(3)
    if texture == 0:  # smooth noise: a coarse random grid upsampled bicubically
        cells = int(rng.integers(3, 8))
        grid = rng.uniform(0.0, 1.0, size=(cells, cells)).astype(np.float32)
        t = np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    elif texture == 1:  # stripes of random period and phase
        period = rng.uniform(0.08, 0.3) * size
        t = 0.5 + 0.5 * np.sin(2.0 * np.pi * along / period + rng.uniform(0.0, 2.0 * np.pi))
    else:  # linear gradient across the image
        t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    c0, c1 = _muted_colors(rng, 2)
    return (c0 + t[..., None] * (c1 - c0)).astype(np.float32)


def _sample_shapes(rng: np.random.Generator, size: int, max_shapes: int) -> List[Shape]:
    """1..max_shapes random shapes, in drawing order (later ones on top)."""
    n = int(rng.integers(1, max_shapes + 1))
    class_ids = rng.integers(1, len(SYNTHETIC_SHAPES_CLASSES), size=n)
    radii = rng.uniform(*_RADIUS_RANGE, size=n) * size
    # Centres keep at least half the radius from the border: a shape may be cut off, its centre never is.
    centers = rng.uniform(0.5 * radii[:, None], size - 1 - 0.5 * radii[:, None], size=(n, 2))
    angles = rng.uniform(0.0, 2.0 * np.pi, size=n)
    return [
        Shape(int(c), (float(x), float(y)), float(r), float(a))
        for c, (x, y), r, a in zip(class_ids, centers, radii, angles)
    ]


def _color_and_kind(class_id: int) -> Tuple[Tuple[int, int, int], int]:
    """(nominal RGB, polygon vertex count) of a shape class; the order matches SYNTHETIC_SHAPES_CLASSES."""
    color_index, kind_index = divmod(class_id - 1, len(SHAPE_KINDS))
    return list(SHAPE_COLORS.values())[color_index], list(SHAPE_KINDS.values())[kind_index]


def _shape_color(rng: np.random.Generator, class_id: int) -> Tuple[int, int, int]:
    """The class's nominal colour, jittered per channel."""
    nominal = np.array(_color_and_kind(class_id)[0], dtype=np.float64)
    jittered = np.clip(nominal + rng.uniform(-_COLOR_JITTER, _COLOR_JITTER, size=3), 0, 255)
    return tuple(int(v) for v in jittered)


def _draw_shape(canvas: np.ndarray, shape: Shape, value, line_type: int) -> None:
    """Fills ``shape`` into ``canvas`` (in place) with ``value`` (a colour or a class id)."""
    n_vertices = _color_and_kind(shape.class_id)[1]
    scale = 1 << _SHIFT
    cx, cy = shape.center
    if n_vertices == 0:
        center = (int(round(cx * scale)), int(round(cy * scale)))
        cv2.circle(canvas, center, int(round(shape.radius * scale)), value, -1, line_type, _SHIFT)
        return
    phis = shape.angle + 2.0 * np.pi * np.arange(n_vertices) / n_vertices
    vertices = np.stack([cx + shape.radius * np.cos(phis), cy + shape.radius * np.sin(phis)], axis=1)
    cv2.fillPoly(canvas, [np.round(vertices * scale).astype(np.int32)], value, line_type, _SHIFT)


def render_sample(
    rng: np.random.Generator,
    image_size: int = DEFAULT_IMAGE_SIZE,
    max_shapes: int = DEFAULT_MAX_SHAPES,
    ignore_band: int = DEFAULT_IGNORE_BAND,
) -> Tuple[np.ndarray, np.ndarray, List[Shape]]:
    """Draws one sample.

    Returns:
        image: [image_size, image_size, 3] uint8, RGB.
        label: [image_size, image_size] uint8, class ids of :data:`SYNTHETIC_SHAPES_CLASSES`; ``IGNORE_LABEL``
            within ``ignore_band`` pixels of a boundary between two classes.
        shapes: the pasted shapes in drawing order (the last one is on top).
    """
    _check_options(image_size, max_shapes, ignore_band)
    # OpenCV anti-aliases only on 8-bit images, so the shapes are drawn on a uint8 canvas.
    image = _to_uint8(render_background(rng, image_size))
    label = np.zeros((image_size, image_size), dtype=np.uint8)
    shapes = _sample_shapes(rng, image_size, max_shapes)
    for shape in shapes:
        # The image is anti-aliased for realistic edges; the label is drawn hard, then its edges are ignored.
        _draw_shape(image, shape, _shape_color(rng, shape.class_id), cv2.LINE_AA)
        _draw_shape(label, shape, shape.class_id, cv2.LINE_8)
    image = _to_uint8(image + rng.normal(0.0, _PIXEL_NOISE_STD, size=image.shape))
    if ignore_band > 0:
        # A pixel whose (2b+1)^2 neighbourhood holds two classes (max != min) lies within b px of a boundary.
        kernel = np.ones((2 * ignore_band + 1,) * 2, dtype=np.uint8)
        label[cv2.dilate(label, kernel) != cv2.erode(label, kernel)] = IGNORE_LABEL
    return image, label, shapes


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _check_options(image_size: int, max_shapes: int, ignore_band: int) -> None:
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {_MIN_IMAGE_SIZE} px, got {image_size}")
    if not 1 <= max_shapes <= _MAX_SHAPES_LIMIT:
        raise ValueError(
            f"max_shapes must be in [1, {_MAX_SHAPES_LIMIT}], got {max_shapes} "
            "(more shapes could cover the whole background)"
        )
    if not 0 <= ignore_band <= _MAX_IGNORE_BAND:
        raise ValueError(f"ignore_band must be in [0, {_MAX_IGNORE_BAND}] px, got {ignore_band}")


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of the counts and of the generation order."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def split_dirs(root: Optional[str], split: str) -> Tuple[str, str]:
    """(image folder, label folder) of ``split`` under :func:`~esc_net.data.paths.dataset_root` of ``root``."""
    base = os.path.join(dataset_root(root), DATASET_DIRNAME)
    return os.path.join(base, "images", split), os.path.join(base, "labels", split)


def manifest_path(root: Optional[str]) -> str:
    """The manifest of the dataset under the dataset root; it exists only once generation has finished."""
    return os.path.join(dataset_root(root), DATASET_DIRNAME, "manifest.json")


def _file_names(count: int) -> List[str]:
    return [f"{i:05d}.png" for i in range(count)]


def _is_complete(root: str, options: Dict) -> bool:
    """Whether ``root`` holds a finished dataset generated with ``options`` (raises if with other options)."""
    if not os.path.isfile(manifest_path(root)):
        return False
    with open(manifest_path(root)) as f:
        existing = json.load(f)
    if existing != options:
        changed = sorted(k for k in set(existing) | set(options) if existing.get(k) != options.get(k))
        details = ", ".join(f"{k}: {existing.get(k)!r} -> {options.get(k)!r}" for k in changed)
        raise FileExistsError(
            f"{os.path.join(root, DATASET_DIRNAME)} holds a synthetic_shapes dataset generated with other options "
            f"({details}); pass --overwrite (overwrite=True) to regenerate it in place, or choose another root"
        )
    return all(
        os.path.isfile(os.path.join(folder, name))
        for split in SPLITS
        for folder in split_dirs(root, split)
        for name in _file_names(options[f"num_{split}"])
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

    ``root`` defaults to ``$DETECTRON2_DATASETS`` or ``./datasets``. Skips the work when a complete dataset with
    the same options is already there; raises ``FileExistsError`` when one with other options is there, unless
    ``overwrite``. A dataset without a manifest (an interrupted run) is regenerated.
    """
    _check_options(image_size, max_shapes, ignore_band)
    counts = {"train": num_train, "val": num_val}
    for split, count in counts.items():
        if count < 1:
            raise ValueError(f"num_{split} must be at least 1, got {count}")
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
        "classes": SYNTHETIC_SHAPES_CLASSES,
    }
    if not overwrite and _is_complete(root, options):
        logger.info(f"{base} is already complete with these options; nothing to do")
        return base
    # From here until the new manifest is written, the folder does not count as a finished dataset.
    if os.path.isfile(manifest_path(root)):
        os.remove(manifest_path(root))

    for split, count in counts.items():
        image_dir, label_dir = split_dirs(root, split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        names = _file_names(count)
        for i, name in enumerate(tqdm(names, desc=f"synthetic_shapes {split}", unit="img")):
            image, label, _ = render_sample(sample_rng(seed, split, i), image_size, max_shapes, ignore_band)
            write_rgb_image(os.path.join(image_dir, name), image)
            write_label_png(os.path.join(label_dir, name), label)
        # Files of an earlier, larger run would otherwise be loaded as part of this dataset.
        expected = set(names)
        for folder in (image_dir, label_dir):
            for stale in sorted(set(os.listdir(folder)) - expected):
                os.remove(os.path.join(folder, stale))
    with open(manifest_path(root), "w") as f:
        json.dump(options, f, indent=2)
    logger.info(f"wrote synthetic_shapes ({num_train} train, {num_val} val, {image_size}px) to {base}")
    return base


def load_synthetic_shapes(split: str, root: Optional[str] = None) -> List[Dict]:
    """Detectron2 dataset dicts (``file_name``, ``sem_seg_file_name``) of ``split``, via ``load_sem_seg``; an
    incomplete split (an image without its label map or the reverse) raises IncompleteDatasetError."""
    image_dir, label_dir = split_dirs(root, split)
    for path in (image_dir, label_dir, manifest_path(root)):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"synthetic_shapes {split} split: {path} does not exist (expected "
                f"{DATASET_DIRNAME}/{{images,labels}}/{{train,val}}/*.png and {DATASET_DIRNAME}/manifest.json "
                f"under {os.path.abspath(dataset_root(root))}); generate it with `{GENERATE_COMMAND}`"
                + ("" if root else " (it writes under $DETECTRON2_DATASETS, default ./datasets)")
            )
    return load_complete_sem_seg(label_dir, image_dir, gt_ext="png", image_ext="png")


def register_synthetic_shapes(root: Optional[str] = None) -> None:
    """Registers ``synthetic_shapes_{train,val}`` in Detectron2's DatasetCatalog and MetadataCatalog.

    Touches no file. With ``root=None`` the loader resolves ``$DETECTRON2_DATASETS`` when the dataset is loaded;
    the ``image_root`` / ``sem_seg_root`` metadata are informative and hold the folders as resolved now.
    """
    for split in SPLITS:
        name = f"{DATASET_DIRNAME}_{split}"
        DatasetCatalog.register(name, functools.partial(load_synthetic_shapes, split, root))
        image_dir, label_dir = split_dirs(root, split)
        MetadataCatalog.get(name).set(
            stuff_classes=list(SYNTHETIC_SHAPES_CLASSES),
            vocabulary=list(SYNTHETIC_SHAPES_CLASSES),
            stuff_colors=[list(c) for c in SYNTHETIC_SHAPES_COLORS],
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
            image_root=image_dir,
            sem_seg_root=label_dir,
            benchmark="Shapes",
        )


register_synthetic_shapes()
