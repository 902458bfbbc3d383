"""What the dataset preparation commands share.

Each command converts an official download into single-channel label maps whose value is the contiguous class
id, with the ignore value of :mod:`esc_net.utils.label_maps` (255 in uint8 maps, 65535 in uint16 maps). What
they share lives here: clear errors for missing inputs, lookup tables from raw annotation values to class ids,
atomic (hence idempotent) writes of label maps and images, the check that a download's class names agree with
ours, and the progress-bar loop that skips finished outputs.
"""

import logging
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterable, List, NamedTuple, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from esc_net.utils.label_maps import ignore_value, label_dtype

__all__ = [
    "ConversionJob",
    "ConversionStats",
    "LabelMapping",
    "add_workers_argument",
    "check_class_names",
    "read_label_image",
    "read_split_list",
    "require_dir",
    "require_file",
    "require_files",
    "run_conversion",
]

logger = logging.getLogger(__name__)

README_HINT = "see datasets/README.md"
# How many missing paths an error message lists before it summarises the rest.
_MAX_LISTED = 10


def _missing_message(what: str, paths: Sequence[Path], download: str) -> str:
    listed = "\n  ".join(str(p) for p in paths[:_MAX_LISTED])
    more = f"\n  ... and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
    return f"missing {what}:\n  {listed}{more}\nIt comes from {download}; {README_HINT}."


def require_dir(path: Path, what: str, download: str) -> Path:
    """Returns ``path`` if it is a folder, else raises FileNotFoundError naming it and its download."""
    if not Path(path).is_dir():
        raise FileNotFoundError(_missing_message(f"{what} (a folder)", [Path(path)], download))
    return Path(path)


def require_file(path: Path, what: str, download: str) -> Path:
    """Returns ``path`` if it is a file, else raises FileNotFoundError naming it and its download."""
    if not Path(path).is_file():
        raise FileNotFoundError(_missing_message(what, [Path(path)], download))
    return Path(path)


def require_files(paths: Iterable[Path], what: str, download: str) -> None:
    """Raises FileNotFoundError listing every path of ``paths`` that is not a file."""
    missing = [Path(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(_missing_message(f"{len(missing)} {what}", missing, download))


def read_split_list(path: Path, download: str) -> List[str]:
    """The image ids of a split file (one id per line, blank lines ignored), in file order."""
    ids = [line.strip() for line in require_file(path, "split list", download).read_text().splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise ValueError(f"split list {path} is empty; it should hold one image id per line")
    return ids


def check_class_names(found: Sequence[str], expected: Sequence[str], source: str, ours: str) -> None:
    """Raises ValueError unless the names a download ships (``found``) equal our class list, entry by entry.

    Args:
        found: names read from the download, in label order.
        expected: our names (``esc_net/data/class_names``), in the same order.
        source: the download's file, for the message.
        ours: our data file, for the message.
    """
    diffs = [
        f"  class {i}: download has {a!r}, {ours} has {b!r}" for i, (a, b) in enumerate(zip(found, expected)) if a != b
    ]
    if len(found) != len(expected):
        diffs.insert(0, f"  the download lists {len(found)} classes, {ours} lists {len(expected)}")
    if diffs:
        more = f"\n  ... {len(diffs) - _MAX_LISTED} more" if len(diffs) > _MAX_LISTED else ""
        shown = "\n".join(diffs[:_MAX_LISTED]) + more
        raise ValueError(
            f"the class names of {source} disagree with {ours}:\n{shown}\n"
            "Is this the official download named in datasets/README.md?"
        )


class LabelMapping:
    """Lookup table from the raw values of an annotation format to contiguous class ids.

    Raw value ``class_raw_values[i]`` becomes class ``i``; every other raw value the format allows becomes the
    ignore value. The output type and ignore value follow :func:`esc_net.utils.label_maps.label_dtype` for the
    number of classes (uint8 and 255 up to 255 classes, else uint16 and 65535). Raw values the format does not
    allow (outside ``[0, num_raw_values)`` or listed in ``invalid_raw_values``) raise an error naming the file:
    they mean the input is not what we think it is.
    """

    def __init__(self, num_raw_values: int, class_raw_values: Sequence[int], invalid_raw_values: Sequence[int] = ()):
        """
        Args:
            num_raw_values: size of the raw value range [0, num_raw_values).
            class_raw_values: the raw value of each class, in class order (distinct, within the range).
            invalid_raw_values: values inside the range that no valid annotation contains.
        """
        raw = np.asarray(class_raw_values, dtype=np.int64)
        if len(np.unique(raw)) != len(raw) or raw.min() < 0 or raw.max() >= num_raw_values:
            raise ValueError(f"class raw values must be distinct and within [0, {num_raw_values})")
        dtype = label_dtype(len(raw))
        self.lut = np.full(num_raw_values, ignore_value(len(raw)), dtype=dtype)
        self.lut[raw] = np.arange(len(raw), dtype=dtype)
        self.valid = np.ones(num_raw_values, dtype=bool)
        self.valid[np.asarray(invalid_raw_values, dtype=np.int64)] = False

    def __call__(self, raw: np.ndarray, source: Path) -> np.ndarray:
        """Maps a raw label array (any integer dtype, any shape) to class ids; ``source`` names it in errors."""
        raw = np.asarray(raw)
        if raw.size and (raw.min() < 0 or raw.max() >= len(self.lut)):
            raise ValueError(
                f"{source}: raw label values span [{raw.min()}, {raw.max()}], outside the expected range "
                f"[0, {len(self.lut)})"
            )
        bad = ~self.valid[raw]
        if bad.any():
            raise ValueError(f"{source}: unexpected raw label values {np.unique(raw[bad])[:_MAX_LISTED].tolist()}")
        return self.lut[raw]


def read_label_image(path: Path) -> np.ndarray:
    """A single-channel label image as an integer array [H, W] (palette PNGs give their indices)."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I;16", "I"):
            raise ValueError(f"{path}: expected a single-channel label image, got PIL mode {img.mode!r}")
        return np.asarray(img)


class ConversionJob(NamedTuple):
    """One unit of conversion: the files it reads, the files ``convert`` writes, and what ``convert`` needs."""

    inputs: Tuple[Path, ...]
    outputs: Tuple[Path, ...]
    payload: object


class ConversionStats(NamedTuple):
    written: int
    skipped: int


def run_conversion(
    jobs: Sequence[ConversionJob],
    convert: Callable[[ConversionJob], None],
    desc: str,
    download: str,
    workers: int = 1,
) -> ConversionStats:
    """Runs ``convert`` on every job whose outputs are not all present, with a tqdm progress bar.

    Outputs are written atomically (see the ``write_*`` helpers), so one that exists is complete and a second
    run skips it. Before converting, the inputs of the remaining jobs must all exist (else FileNotFoundError
    naming them and ``download``). ``workers > 1`` converts in that many processes (``convert`` must then be a
    module-level function).
    """
    todo = [job for job in jobs if not all(Path(p).is_file() for p in job.outputs)]
    skipped = len(jobs) - len(todo)
    if skipped:
        logger.info(f"{desc}: {skipped} of {len(jobs)} outputs already exist and are skipped")
    require_files([p for job in todo for p in job.inputs], f"input files of {desc}", download)
    if workers > 1 and len(todo) > 1:
        with Pool(workers) as pool:
            for _ in tqdm(pool.imap_unordered(convert, todo, chunksize=16), total=len(todo), desc=desc):
                pass
    else:
        for job in tqdm(todo, desc=desc):
            convert(job)
    logger.info(f"{desc}: wrote {len(todo)}, skipped {skipped}")
    return ConversionStats(written=len(todo), skipped=skipped)


def add_workers_argument(parser) -> None:
    """Adds ``--workers`` (conversion processes, see :func:`run_conversion`) to an argparse parser."""
    parser.add_argument("--workers", type=int, default=1, help="conversion processes (default 1)")
