"""The rules of a vocabulary's text: what a class name is and what a list of them must be, and the one reader of
a file of class names. Imported by the model, the data layer and the demos alike (nothing here reads a dataset
catalog)."""

import os
import unicodedata
from collections.abc import Iterable
from typing import List, Sequence

__all__ = ["check_vocabulary", "read_vocabulary_file", "split_synonyms"]


def _synonyms(name: str) -> List[str]:
    return [part.strip() for part in name.split(",") if part.strip()]


def split_synonyms(name: str) -> List[str]:
    """ "sofa, couch" -> ["sofa", "couch"]. Raises ValueError for a name without any non-empty synonym."""
    if not isinstance(name, str):
        raise TypeError(f"A class name must be a string, got {type(name).__name__}: {name!r}")
    synonyms = _synonyms(name)
    if not synonyms:
        raise ValueError(f"Class name {name!r} is empty")
    return synonyms


def check_vocabulary(names: Sequence[str]) -> List[str]:
    """Validates a user-given vocabulary and returns its names, stripped.

    A vocabulary is a non-empty sequence of strings; each name holds at least one non-empty synonym after
    splitting at commas ("sofa, couch") and is one line of printable text (no line break, tab or other control
    character: the demo writes one name per line, after its index and a tab). Two classes with the same synonyms
    (compared without case and spacing) are an error: they would get identical text embeddings and identical
    scores, so the second could never be predicted. Names too long for the text encoder are checked where the
    tokenizer is known (``ESCNet.check_vocabulary`` warns about them).

    Raises:
        TypeError: ``names`` is one string or not a sequence at all (None, a number), or an entry is not a string.
        ValueError: the vocabulary is empty, a name is empty after synonym splitting (" , ") or holds a control
            character, or names repeat.
    """
    if isinstance(names, str):
        raise TypeError(f"a vocabulary is a list of class names, not one string: {names!r}")
    if not isinstance(names, Iterable):
        raise TypeError(f"a vocabulary is a list of class names, got {type(names).__name__}: {names!r}")
    names = list(names)
    if not names:
        raise ValueError("the vocabulary is empty: give at least one class name")
    not_strings = [f"{i}: {n!r}" for i, n in enumerate(names) if not isinstance(n, str)]
    if not_strings:
        raise TypeError(f"class names must be strings; these are not (position: value): {', '.join(not_strings)}")
    names = [n.strip() for n in names]
    empty = [f"{i}: {n!r}" for i, n in enumerate(names) if not _synonyms(n)]
    if empty:
        raise ValueError(f"the vocabulary has class names without any synonym (position: name): {', '.join(empty)}")
    # Unicode's "Cc" category: line breaks, tabs, NUL and the other C0/C1 controls.
    control = [f"{i}: {n!r}" for i, n in enumerate(names) if any(unicodedata.category(c) == "Cc" for c in n)]
    if control:
        raise ValueError(
            "class names must be one line of text; these hold a line break, tab or other control character "
            f"(position: name): {', '.join(control)}"
        )
    first_position = {}
    repeats = []
    for i, name in enumerate(names):
        key = tuple(" ".join(s.lower().split()) for s in _synonyms(name))
        if key in first_position:
            repeats.append(f"{name!r} at {first_position[key]} and {i}")
        first_position.setdefault(key, i)
    if repeats:
        raise ValueError(f"the vocabulary repeats class names (their scores would be identical): {'; '.join(repeats)}")
    return names


def read_vocabulary_file(path: str) -> List[str]:
    """The class names of a text file with one class per line (synonyms after commas); blank lines and ``#``
    comment lines are skipped. The names are returned as written (check them with :func:`check_vocabulary`).

    Raises:
        FileNotFoundError: naming the file.
        ValueError: the file holds no class name.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise ValueError(f"the vocabulary file {path} holds no class name (expected one class per line)")
    return names
