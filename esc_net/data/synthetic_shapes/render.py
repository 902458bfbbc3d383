"""Drawing the Synthetic Shapes world: textured backgrounds, jittered shapes, label maps, instance masks, captions.

Every random choice comes from the ``numpy.random.Generator`` passed in, so an image is a pure function of its
generator (see :func:`sample_rng`). Images are RGB uint8; label maps hold indices into
:data:`~esc_net.data.synthetic_shapes.world.ALL_CLASSES` (uint8), with :data:`IGNORE_LABEL` on a band along every
boundary between two classes (drawings are anti-aliased, so boundary pixels mix two classes' colours).
"""

import zlib
from typing import List, NamedTuple, Sequence, Tuple

import cv2
import numpy as np

from esc_net.data.synthetic_shapes.world import ALL_CLASSES, SHAPE_COLORS, SHAPE_KINDS, STUFF_CLASSES, color_and_kind
from esc_net.utils.label_maps import ignore_value

__all__ = ["IGNORE_LABEL", "Sample", "Shape", "caption", "instance_masks", "render_sample", "sample_rng"]

IGNORE_LABEL = ignore_value(len(ALL_CLASSES))

# Circumradius range of an object, as a fraction of the image side (at 64 px: 10 to 19 pixels, 2.5 to 5 patches of
# the tiny CLIP across). 3 circles of the largest radius cover at most 3 * pi * 0.3^2 = 85% of the image, so some
# background always stays visible.
RADIUS_RANGE = (0.16, 0.30)
MAX_SHAPES_LIMIT = 3
MIN_IMAGE_SIZE = 32
MAX_IGNORE_BAND = 3
_COLOR_JITTER = 25  # +- per channel, on 0..255; the nominal colours stay at least 60 apart in some channel
_PIXEL_NOISE_STD = 5.0
# cv2 drawing with sub-pixel coordinates: they are given as integers scaled by 2**_SHIFT.
_SHIFT = 4


def _regular_polygon(n: int) -> np.ndarray:
    angles = 2.0 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    angles = np.pi * np.arange(2 * points) / points
    return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _bar(half_width: float = 0.32) -> np.ndarray:
    """A rectangle whose corners touch the unit circle, three times as long as it is wide."""
    t, length = half_width, float(np.sqrt(1.0 - half_width**2))
    return np.array([(length, t), (-length, t), (-length, -t), (length, -t)])


def _cross(half_width: float = 0.3) -> np.ndarray:
    """A plus sign whose arm ends touch the unit circle."""
    t, length = half_width, float(np.sqrt(1.0 - half_width**2))
    quarter = [(t, length), (t, t), (length, t)]
    turns = [(x, y) for k in range(4) for x, y in [_rotate(p, -np.pi / 2 * k) for p in quarter]]
    return np.array(turns)


def _rotate(point: Tuple[float, float], angle: float) -> Tuple[float, float]:
    x, y = point
    return x * np.cos(angle) - y * np.sin(angle), x * np.sin(angle) + y * np.cos(angle)


# Outline of every kind on the unit circle ([V, 2] vertices); None = a circle.
_OUTLINES = {
    "circle": None,
    "square": _regular_polygon(4),
    "triangle": _regular_polygon(3),
    "bar": _bar(),
    "star": _star(),
    "cross": _cross(),
}
assert set(_OUTLINES) == set(SHAPE_KINDS)


class Shape(NamedTuple):
    """One object: its class id in ALL_CLASSES, centre (x, y) and circumradius in pixels, rotation, RGB colour."""

    class_id: int
    center: Tuple[float, float]
    radius: float
    angle: float
    color: Tuple[int, int, int]

    @property
    def name(self) -> str:
        return ALL_CLASSES[self.class_id]


class Sample(NamedTuple):
    """One drawn image.

    Attributes:
        image: [S, S, 3] uint8 RGB.
        label: [S, S] uint8 ids into ALL_CLASSES; IGNORE_LABEL within ``ignore_band`` pixels of a boundary.
        shapes: the objects in drawing order (later ones on top; one may hide parts of another).
        stuff: the id (in ALL_CLASSES, = index in STUFF_CLASSES) of the background texture.
    """

    image: np.ndarray
    label: np.ndarray
    shapes: List[Shape]
    stuff: int


def sample_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``stream`` (a split, or a pre-training stream such as "clip"):
    independent of the counts, of the generation order, and of every other stream."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), index])


def _muted_colors(rng: np.random.Generator, n: int) -> np.ndarray:
    """n low-saturation RGB colours [n, 3] float: a grey level with a small tint per channel."""
    grey = rng.uniform(60.0, 190.0, size=(n, 1))
    return grey + rng.uniform(-18.0, 18.0, size=(n, 3))


def render_background(rng: np.random.Generator, size: int, texture: int) -> np.ndarray:
    """The texture ``STUFF_CLASSES[texture]`` [size, size, 3] float32 (RGB, 0..255): a mixing field t in [0, 1]
    blends two muted colours, c0 + t * (c1 - c0)."""
    coords = np.arange(size, dtype=np.float32)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    theta = rng.uniform(0.0, 2.0 * np.pi)
    u = xs * np.cos(theta) + ys * np.sin(theta)  # distance along a random direction
    v = -xs * np.sin(theta) + ys * np.cos(theta)  # and across it
    name = STUFF_CLASSES[texture]
    if name == "stripes":  # parallel sinusoidal bands
        period = rng.uniform(0.12, 0.3) * size
        t = 0.5 + 0.5 * np.sin(2.0 * np.pi * u / period + rng.uniform(0.0, 2.0 * np.pi))
    elif name == "checks":  # a rotated checkerboard, edges softened by a pixel
        cell = rng.uniform(0.1, 0.2) * size
        t = 0.5 + 0.5 * np.clip(np.sin(np.pi * u / cell) * np.sin(np.pi * v / cell) * 8.0, -1.0, 1.0)
    else:  # clouds: smooth noise, a coarse random grid upsampled bicubically
        cells = int(rng.integers(3, 7))
        grid = rng.uniform(0.0, 1.0, size=(cells, cells)).astype(np.float32)
        t = np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    c0, c1 = _muted_colors(rng, 2)
    return (c0 + t[..., None] * (c1 - c0)).astype(np.float32)


def _sample_shapes(rng: np.random.Generator, size: int, objects: Sequence[int], max_shapes: int) -> List[Shape]:
    """1..max_shapes random objects of the class ids ``objects``, in drawing order."""
    n = int(rng.integers(1, max_shapes + 1))
    class_ids = rng.choice(np.asarray(objects), size=n)
    radii = rng.uniform(*RADIUS_RANGE, size=n) * size
    # Centres keep at least half the radius from the border: an object may be cut off, its centre never is.
    centers = rng.uniform(0.5 * radii[:, None], size - 1 - 0.5 * radii[:, None], size=(n, 2))
    angles = rng.uniform(0.0, 2.0 * np.pi, size=n)
    shapes = []
    for c, (x, y), r, a in zip(class_ids, centers, radii, angles):
        nominal = np.array(SHAPE_COLORS[color_and_kind(ALL_CLASSES[c])[0]], dtype=np.float64)
        jittered = np.clip(nominal + rng.uniform(-_COLOR_JITTER, _COLOR_JITTER, size=3), 0, 255)
        shapes.append(Shape(int(c), (float(x), float(y)), float(r), float(a), tuple(int(v) for v in jittered)))
    return shapes


def _draw_shape(canvas: np.ndarray, shape: Shape, value, line_type: int) -> None:
    """Fills ``shape`` into ``canvas`` (in place) with ``value`` (a colour, a class id or an instance id)."""
    outline = _OUTLINES[color_and_kind(shape.name)[1]]
    scale = 1 << _SHIFT
    cx, cy = shape.center
    if outline is None:
        center = (int(round(cx * scale)), int(round(cy * scale)))
        cv2.circle(canvas, center, int(round(shape.radius * scale)), value, -1, line_type, _SHIFT)
        return
    cos, sin = np.cos(shape.angle), np.sin(shape.angle)
    rotated = outline @ np.array([[cos, sin], [-sin, cos]])
    vertices = np.array([cx, cy]) + shape.radius * rotated
    cv2.fillPoly(canvas, [np.round(vertices * scale).astype(np.int32)], value, line_type, _SHIFT)


def check_options(image_size: int, max_shapes: int, ignore_band: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    if not 1 <= max_shapes <= MAX_SHAPES_LIMIT:
        raise ValueError(
            f"max_shapes must be in [1, {MAX_SHAPES_LIMIT}], got {max_shapes} "
            "(more shapes could cover the whole background)"
        )
    if not 0 <= ignore_band <= MAX_IGNORE_BAND:
        raise ValueError(f"ignore_band must be in [0, {MAX_IGNORE_BAND}] px, got {ignore_band}")


def render_sample(
    rng: np.random.Generator, objects: Sequence[str], image_size: int, max_shapes: int, ignore_band: int
) -> Sample:
    """Draws one image of a random texture with 1 to ``max_shapes`` objects of the classes ``objects``."""
    check_options(image_size, max_shapes, ignore_band)
    stuff = int(rng.integers(len(STUFF_CLASSES)))
    # OpenCV anti-aliases only on 8-bit images, so the shapes are drawn on a uint8 canvas.
    image = _to_uint8(render_background(rng, image_size, stuff))
    label = np.full((image_size, image_size), stuff, dtype=np.uint8)
    shapes = _sample_shapes(rng, image_size, [ALL_CLASSES.index(name) for name in objects], max_shapes)
    for shape in shapes:
        # The image is anti-aliased for realistic edges; the label is drawn hard, then its edges are ignored.
        _draw_shape(image, shape, shape.color, cv2.LINE_AA)
        _draw_shape(label, shape, shape.class_id, cv2.LINE_8)
    image = _to_uint8(image + rng.normal(0.0, _PIXEL_NOISE_STD, size=image.shape))
    if ignore_band > 0:
        # A pixel whose (2b+1)^2 neighbourhood holds two classes (max != min) lies within b px of a boundary.
        kernel = np.ones((2 * ignore_band + 1,) * 2, dtype=np.uint8)
        label[cv2.dilate(label, kernel) != cv2.erode(label, kernel)] = IGNORE_LABEL
    return Sample(image, label, shapes, stuff)


def instance_masks(sample: Sample) -> np.ndarray:
    """[n, S, S] bool: the visible part of every object of ``sample`` (drawing order; an object hidden entirely by
    later ones has an empty mask). Boundaries are the hard ones of the label map, without ignore band."""
    size = sample.image.shape[0]
    instances = np.zeros((size, size), dtype=np.uint8)
    for i, shape in enumerate(sample.shapes):
        _draw_shape(instances, shape, i + 1, cv2.LINE_8)
    return instances[None] == np.arange(1, len(sample.shapes) + 1, dtype=np.uint8)[:, None, None]


def caption(sample: Sample, min_visible: float = 0.3) -> str:
    """The sentence that names what ``sample`` shows: its visible objects (each name once, largest first) and its
    texture, e.g. "a photo of a red star and a blue bar on stripes."

    An object counts as visible when at least ``min_visible`` of its own area is not hidden by later ones.
    """
    masks = instance_masks(sample)
    names: List[str] = []
    areas = masks.sum(axis=(1, 2))
    for i in np.argsort(-areas, kind="stable"):
        full = np.zeros(masks.shape[1:], dtype=np.uint8)
        _draw_shape(full, sample.shapes[i], 1, cv2.LINE_8)
        name = sample.shapes[i].name
        if areas[i] >= min_visible * max(int(full.sum()), 1) and name not in names:
            names.append(name)
    stuff = STUFF_CLASSES[sample.stuff]
    if not names:
        return f"a photo of {stuff}."
    return f"a photo of {' and '.join(f'a {name}' for name in names)} on {stuff}."


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
