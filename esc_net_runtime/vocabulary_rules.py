"""The rules of a vocabulary's text: what a class name is and what a list of them must be, and the one reader of
a file of class names. Imported by the model, the data layer, the demos and the ONNX runtime alike (nothing here
reads a dataset catalog or imports PyTorch)."""

import os
import unicodedata
from collections.abc import Iterable
from typing import List, NamedTuple, Optional, Sequence

__all__ = ["VocabularyLimitError", "VocabularyLimits", "check_vocabulary", "read_vocabulary_file", "split_synonyms"]

# Characters of a refused name quoted in the message: enough to recognise it, never the whole text.
_QUOTED_CHARS = 24


class VocabularyLimits(NamedTuple):
    """The longest class name and the most class names a demo accepts, checked on the text before any tokenisation.

    open_clip's tokenizer merges the characters of each word pair by pair, in time that grows with the square of
    the word's length (a name of 100,000 letters without a space took minutes), while the text encoder reads 77
    tokens of a prompt at most. ``max_name_chars`` (300): 75 tokens after the start and end markers, less the
    prompt template's words, at about 4 characters per token of English text, is about 300 characters: the
    tokenizer cuts off the end of a longer English name of one synonym in any case. The longest name of the benchmarks'
    vocabularies (A-847's "computer, computing machine, ..." with six synonyms) has 113. ``max_classes`` (2000):
    the largest vocabularies of open-vocabulary benchmarks have 847 (A-847) and 1203 (LVIS) classes. At both
    limits (2000 names of 300 letters without a space, the tokenizer's worst case) tokenising takes seconds, less
    than segmenting one image into 2000 classes.
    """

    max_name_chars: int = 300
    max_classes: int = 2000


class VocabularyLimitError(ValueError):
    """A vocabulary over :class:`VocabularyLimits`. ``limit`` is the field exceeded ("max_name_chars" or
    "max_classes"), so that a caller can name the option that raises it."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


def _check_limits(names: List[str], limits: VocabularyLimits) -> None:
    if len(names) > limits.max_classes:
        raise VocabularyLimitError(
            f"the vocabulary has {len(names)} class names; at most {limits.max_classes} are accepted", "max_classes"
        )
    for i, name in enumerate(names):
        if len(name) > limits.max_name_chars:
            raise VocabularyLimitError(
                f"class name {i} ({name[:_QUOTED_CHARS]!r}...) has {len(name)} characters; at most "
                f"{limits.max_name_chars} are accepted",
                "max_name_chars",
            )


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


def check_vocabulary(names: Sequence[str], limits: Optional[VocabularyLimits] = None) -> List[str]:
    """Validates a user-given vocabulary and returns its names, stripped.

    A vocabulary is a non-empty sequence of strings; each name holds at least one non-empty synonym after
    splitting at commas ("sofa, couch") and is one line of printable text (no line break, tab or other control
    character: the demo writes one name per line, after its index and a tab). Two classes with the same synonyms
    (compared without case and spacing) are an error: they would get identical text embeddings and identical
    scores, so the second could never be predicted. Names too long for the text encoder are checked where the
    tokenizer is known (``ESCNet.check_vocabulary`` and ``ONNXPredictor`` warn about them). With ``limits`` (the
    demos'), the number of names and each stripped name's characters are checked first, before any other rule reads
    the text.

    Raises:
        TypeError: ``names`` is one string or not a sequence at all (None, a number), or an entry is not a string.
        ValueError: the vocabulary is empty, a name is empty after synonym splitting (" , ") or holds a control
            character, or names repeat.
        VocabularyLimitError: (a ValueError) more names than ``limits.max_classes``, or a name longer than
            ``limits.max_name_chars``; the message quotes the name's start only.
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
    if limits is not None:
        _check_limits(names, limits)
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
