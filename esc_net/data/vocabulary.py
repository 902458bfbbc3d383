"""The class names a model scores for a registered dataset (its open vocabulary)."""
from typing import List, Sequence

from detectron2.data import MetadataCatalog


def get_dataset_vocabulary(dataset_name: str) -> List[str]:
    """The names the model scores for ``dataset_name``: its metadata ``vocabulary``, else ``stuff_classes``.

    The two differ only where the evaluation protocol scores more names than it evaluates (PAS-20b scores the
    PASCAL-Context classes too and counts them as background).
    """
    meta = MetadataCatalog.get(dataset_name)
    names = meta.get("vocabulary", None) or meta.get("stuff_classes", None)
    if not names:
        raise KeyError(
            f"dataset {dataset_name!r} has no 'vocabulary' or 'stuff_classes' metadata: is it registered? "
            "(importing esc_net registers the benchmarks; see datasets/README.md)"
        )
    return list(names)


def check_vocabulary(names: Sequence[str]) -> List[str]:
    """Validates a user-given vocabulary: a non-empty sequence of non-empty class names."""
    if isinstance(names, str):
        raise TypeError(f"a vocabulary is a list of class names, not one string: {names!r}")
    names = [str(n).strip() for n in names]
    if not names:
        raise ValueError("the vocabulary is empty: give at least one class name")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(f"the vocabulary has empty class names at positions {empty}")
    return names
