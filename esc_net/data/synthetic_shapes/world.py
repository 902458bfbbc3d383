"""The classes of the Synthetic Shapes world, their split into seen and unseen, and its benchmarks.

The world has 6 colours x 6 shape kinds = 36 object classes named in words ("red circle", ..., "purple cross")
and 3 "stuff" classes, the background textures (``stripes``, ``checks``, ``clouds``). Every image has one
background texture and 1 to ``max_shapes`` objects on it.

The split mirrors the real protocol (segmentation training on COCO-Stuff, zero-shot evaluation on benchmarks whose
names COCO-Stuff lacks), with two kinds of unseen classes:

* **unseen kinds** (:data:`UNSEEN_KINDS`): every star and every cross. No training label ever holds a star or a
  cross, like the A-847 names that COCO-Stuff has no class for;
* **unseen combinations** (:data:`UNSEEN_COMBINATIONS`): six (colour, kind) pairs of seen colours and seen kinds,
  one per colour, so that every colour and every seen kind is still segmented in training under other names.

The 18 remaining objects and the 3 textures are the **seen** classes: the training vocabulary.

Training images hold seen objects only: unseen objects are left out of the images rather than labelled "ignore".
An ignore label would still show the model an unseen object's pixels (through the image) and tell it, through the
label, exactly where an object it must not name is; leaving them out makes the unseen classes new to segmentation
training in every respect, which is the strict form of the zero-shot setting. The image-level pre-training of CLIP
(captions) and the class-agnostic pre-training of SAM (masks) see every class, as real CLIP and SAM have seen
objects that COCO-Stuff does not name.
"""

from typing import Dict, List, NamedTuple, Tuple

__all__ = [
    "ALL_CLASSES",
    "BENCHMARKS",
    "OBJECT_CLASSES",
    "SEEN_CLASSES",
    "SEEN_OBJECTS",
    "SHAPE_COLORS",
    "SHAPE_KINDS",
    "STUFF_CLASSES",
    "UNSEEN_COMBINATIONS",
    "UNSEEN_KINDS",
    "UNSEEN_OBJECTS",
    "Benchmark",
    "class_color",
    "color_and_kind",
]

# Nominal RGB of each object colour; every object gets its own jittered version.
SHAPE_COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (225, 210, 35),
    "green": (45, 165, 60),
    "blue": (45, 85, 215),
    "purple": (145, 55, 190),
}
# Kinds that differ at the 8 x 8 patch grid of the tiny CLIP (a hexagon and a circle of 10 pixels did not).
SHAPE_KINDS: Tuple[str, ...] = ("circle", "square", "triangle", "bar", "star", "cross")
# The background textures, in the order of the generator's texture ids.
STUFF_CLASSES: Tuple[str, ...] = ("stripes", "checks", "clouds")

OBJECT_CLASSES: List[str] = [f"{color} {kind}" for color in SHAPE_COLORS for kind in SHAPE_KINDS]
# The label space of every generated label before it is written: stuff first, then the objects colour-major.
ALL_CLASSES: List[str] = list(STUFF_CLASSES) + OBJECT_CLASSES

UNSEEN_KINDS: Tuple[str, ...] = ("star", "cross")
# One pair per colour; each seen kind is held out once or twice, always with a colour that keeps it elsewhere.
UNSEEN_COMBINATIONS: Tuple[str, ...] = (
    "red triangle",
    "orange bar",
    "yellow circle",
    "green square",
    "blue triangle",
    "purple bar",
)


def color_and_kind(name: str) -> Tuple[str, str]:
    """ "red circle" -> ("red", "circle"). Raises KeyError for a name that is not an object class."""
    color, _, kind = name.partition(" ")
    if color not in SHAPE_COLORS or kind not in SHAPE_KINDS:
        raise KeyError(f"{name!r} is not an object class of the Synthetic Shapes world")
    return color, kind


SEEN_OBJECTS: List[str] = [
    name for name in OBJECT_CLASSES if color_and_kind(name)[1] not in UNSEEN_KINDS and name not in UNSEEN_COMBINATIONS
]
UNSEEN_OBJECTS: List[str] = [name for name in OBJECT_CLASSES if name not in SEEN_OBJECTS]
SEEN_CLASSES: List[str] = list(STUFF_CLASSES) + SEEN_OBJECTS


class Benchmark(NamedTuple):
    """One split of the world on disk and the Detectron2 dataset that reads it.

    The images of a split hold objects of ``objects`` only; its labels are indices into ``vocabulary`` (the names
    the model scores). ``groups`` names the classes of the vocabulary that are seen and unseen in segmentation
    training, for the per-group means of the benchmark table.
    """

    split: str  # folder name under images/ and labels/
    dataset_name: str  # Detectron2 dataset name
    title: str  # column of the benchmark table
    objects: Tuple[str, ...]
    vocabulary: Tuple[str, ...]

    @property
    def groups(self) -> Dict[str, List[str]]:
        groups = {
            "seen": [n for n in self.vocabulary if n in SEEN_CLASSES],
            "unseen": [n for n in self.vocabulary if n not in SEEN_CLASSES],
        }
        return {group: names for group, names in groups.items() if names}


def _benchmark(split: str, title: str, objects: List[str]) -> Benchmark:
    return Benchmark(split, f"synthetic_shapes_{split}", title, tuple(objects), tuple(STUFF_CLASSES) + tuple(objects))


# The training split and the three zero-shot benchmarks, in the order of the benchmark table.
BENCHMARKS: Tuple[Benchmark, ...] = (
    _benchmark("train", "Shapes train", SEEN_OBJECTS),
    # the seen vocabulary on images of seen objects: the closed-set figure (COCO-Stuff's validation split)
    _benchmark("val", "Shapes seen", SEEN_OBJECTS),
    # images of unseen objects only, scored against the unseen names and the (seen) textures
    _benchmark("val_unseen", "Shapes unseen", UNSEEN_OBJECTS),
    # every class in images and vocabulary: the large-vocabulary case (A-847 against COCO-Stuff's 171)
    _benchmark("val_all", "Shapes all", OBJECT_CLASSES),
)

# Visualizer colours: textures in greys; an object in its nominal colour, at one brightness per kind.
_STUFF_GREYS = (96, 144, 192)
_KIND_BRIGHTNESS = (1.0, 0.55, 1.3, 0.75, 1.15, 0.4)


def class_color(name: str) -> List[int]:
    """The RGB colour Detectron2's Visualizer draws class ``name`` in."""
    if name in STUFF_CLASSES:
        return [_STUFF_GREYS[STUFF_CLASSES.index(name)]] * 3
    color, kind = color_and_kind(name)
    brightness = _KIND_BRIGHTNESS[SHAPE_KINDS.index(kind)]
    return [int(min(255, round(c * brightness))) for c in SHAPE_COLORS[color]]
