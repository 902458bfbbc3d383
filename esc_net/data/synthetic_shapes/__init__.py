"""Synthetic Shapes: a miniature open-vocabulary world generated on the CPU (the embedded default's data).

Its classes and their seen/unseen split are in :mod:`.world`, the drawing in :mod:`.render`, the dataset on disk
and its Detectron2 registration in :mod:`.dataset`. Importing the package registers the datasets.
"""

from esc_net.data.synthetic_shapes.dataset import (
    DATASET_DIRNAME,
    DEFAULT_IGNORE_BAND,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_SHAPES,
    DEFAULT_NUM_IMAGES,
    GENERATE_COMMAND,
    SPLITS,
    benchmark,
    generate_synthetic_shapes,
    load_synthetic_shapes,
    manifest_path,
    register_synthetic_shapes,
    render_split_sample,
    split_dirs,
    to_vocabulary_ids,
)
from esc_net.data.synthetic_shapes.render import (
    IGNORE_LABEL,
    Sample,
    Shape,
    caption,
    instance_masks,
    render_sample,
    sample_rng,
)
from esc_net.data.synthetic_shapes.world import (
    ALL_CLASSES,
    BENCHMARKS,
    OBJECT_CLASSES,
    SEEN_CLASSES,
    SEEN_OBJECTS,
    SHAPE_COLORS,
    SHAPE_KINDS,
    STUFF_CLASSES,
    UNSEEN_COMBINATIONS,
    UNSEEN_KINDS,
    UNSEEN_OBJECTS,
    class_color,
    color_and_kind,
)

__all__ = [
    "ALL_CLASSES",
    "BENCHMARKS",
    "DATASET_DIRNAME",
    "DEFAULT_IGNORE_BAND",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_SHAPES",
    "DEFAULT_NUM_IMAGES",
    "GENERATE_COMMAND",
    "IGNORE_LABEL",
    "OBJECT_CLASSES",
    "SEEN_CLASSES",
    "SEEN_OBJECTS",
    "SHAPE_COLORS",
    "SHAPE_KINDS",
    "SPLITS",
    "STUFF_CLASSES",
    "Sample",
    "Shape",
    "UNSEEN_COMBINATIONS",
    "UNSEEN_KINDS",
    "UNSEEN_OBJECTS",
    "benchmark",
    "caption",
    "class_color",
    "color_and_kind",
    "generate_synthetic_shapes",
    "instance_masks",
    "load_synthetic_shapes",
    "manifest_path",
    "render_sample",
    "render_split_sample",
    "sample_rng",
    "split_dirs",
    "to_vocabulary_ids",
]

register_synthetic_shapes()
