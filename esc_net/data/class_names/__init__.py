"""Class-name lists of the benchmarks: the single copy used for text prompts and Detectron2 metadata.

Each benchmark has a data file ``<benchmark>.txt`` in this package with one class per line, in label order
(line i is the class whose label value is i after dataset preparation). A line may hold synonyms separated by
", " (e.g. ``building, edifice``); they stay on one line because they name one class.

Where the official download encodes classes with its own ids (COCO category ids for COCO-Stuff, the ADE20K full
index for A-847), ``<benchmark>_source_ids.txt`` gives, line by line, the raw id of the same class. The
preparation scripts build their lookup tables from these files and check them against the download.
"""

import functools
from importlib import resources
from typing import List, Tuple

__all__ = ["BENCHMARK_CLASS_FILES", "load_class_names", "load_source_ids"]

# Benchmark key -> number of classes. The key is also the data file's stem.
BENCHMARK_CLASS_FILES = {
    "coco_stuff_171": 171,
    "ade20k_150": 150,
    "ade20k_847": 847,
    "pascal_context_59": 59,
    "pascal_context_459": 459,
    "voc_20": 20,
}


def _read_lines(file_name: str) -> Tuple[str, ...]:
    text = resources.files(__name__).joinpath(file_name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines())


def _check_benchmark(benchmark: str) -> int:
    if benchmark not in BENCHMARK_CLASS_FILES:
        raise KeyError(f"unknown benchmark {benchmark!r}; class-name lists exist for {sorted(BENCHMARK_CLASS_FILES)}")
    return BENCHMARK_CLASS_FILES[benchmark]


@functools.lru_cache(maxsize=None)
def _class_names(benchmark: str) -> Tuple[str, ...]:
    expected = _check_benchmark(benchmark)
    names = _read_lines(f"{benchmark}.txt")
    # Fail loudly on a damaged data file: a shifted or missing line silently mislabels every class after it.
    if len(names) != expected or not all(names):
        raise ValueError(
            f"esc_net/data/class_names/{benchmark}.txt must hold {expected} non-empty lines, one class per line; "
            f"it holds {len(names)} lines ({sum(not n for n in names)} empty)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"esc_net/data/class_names/{benchmark}.txt lists a class name twice")
    return names


def load_class_names(benchmark: str) -> List[str]:
    """The class names of ``benchmark`` (a key of :data:`BENCHMARK_CLASS_FILES`), in label order.

    Synonyms stay joined as ``"a, b"`` in one entry; splitting them is up to the text encoder.
    """
    return list(_class_names(benchmark))


@functools.lru_cache(maxsize=None)
def _source_ids(benchmark: str) -> Tuple[int, ...]:
    expected = _check_benchmark(benchmark)
    file_name = f"{benchmark}_source_ids.txt"
    if not resources.files(__name__).joinpath(file_name).is_file():
        raise KeyError(f"benchmark {benchmark!r} has no source-id list (esc_net/data/class_names/{file_name})")
    lines = _read_lines(file_name)
    if len(lines) != expected or not all(line.isdigit() for line in lines):
        raise ValueError(f"esc_net/data/class_names/{file_name} must hold {expected} lines with one integer each")
    ids = tuple(int(line) for line in lines)
    if len(set(ids)) != len(ids):
        raise ValueError(f"esc_net/data/class_names/{file_name} lists a source id twice")
    return ids


def load_source_ids(benchmark: str) -> List[int]:
    """For each class of ``benchmark`` (label order), its id in the official download's raw annotations.

    Available for ``coco_stuff_171`` (COCO category ids; the stuffthingmaps PNGs store id - 1) and ``ade20k_847``
    (values of the ADE20K full release's class mask, (R/10)*256 + G, i.e. 1 + position in ``objectnames``).
    """
    return list(_source_ids(benchmark))
