"""Class names -> the text prompts the text encoder reads, and which class each synonym belongs to.

The PyTorch model (:mod:`esc_net.modeling.clip.text_prompts`) and the ONNX runtime build their prompts here, so a
vocabulary reaches both text encoders as the same strings in the same order.
"""

import warnings
from typing import Callable, List, Sequence, Tuple

import numpy as np

from esc_net_runtime.vocabulary_rules import split_synonyms

__all__ = ["SYNONYM_MODES", "check_templates", "prompt_list", "truncated_names", "warn_truncated_names"]

SYNONYM_MODES = ("first", "average")


def check_templates(templates: Sequence[str]) -> Tuple[str, ...]:
    """Returns the templates as a tuple; raises ValueError unless there is at least one and each holds one "{}"."""
    templates = tuple(templates)
    if not templates:
        raise ValueError("At least one prompt template is needed, e.g. 'A photo of a {} in the scene.'")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(
                f"A prompt template must be a string with exactly one '{{}}' for the class name: {template!r}"
            )
    return templates


def prompt_list(class_names: Sequence[str], templates: Sequence[str], synonym_mode: str) -> Tuple[List[str], List[int]]:
    """Expands N class names into prompts.

    Returns:
        prompts: S * T strings, synonym-major: prompt ``s * T + t`` is template t filled with used synonym s
            (S = N in mode "first"; S = total number of synonyms in mode "average").
        synonym_to_class: S ints, the class index of each used synonym.
    """
    if synonym_mode not in SYNONYM_MODES:
        raise ValueError(f"synonym_mode must be one of {SYNONYM_MODES}, got {synonym_mode!r}")
    if len(class_names) == 0:
        raise ValueError("encode_text needs at least one class name, got an empty list")
    templates = check_templates(templates)
    synonyms, owners = [], []
    for index, name in enumerate(class_names):
        used = split_synonyms(name)
        if synonym_mode == "first":
            used = used[:1]
        synonyms.extend(used)
        owners.extend([index] * len(used))
    return [template.format(synonym) for synonym in synonyms for template in templates], owners


def truncated_names(
    class_names: Sequence[str], templates: Sequence[str], tokenize: Callable[[List[str]], "np.ndarray"]
) -> List[str]:
    """The names of which some prompt (any template, any synonym) fills the text context, so that the tokenizer
    cuts its end off: such names can end up with the same embedding as another name.

    Args:
        tokenize: prompts -> [P, context_length] zero-padded token ids (a numpy array, or a CPU tensor).
    """
    prompts, synonym_to_class = prompt_list(class_names, templates, "average")
    full = (np.asarray(tokenize(prompts))[:, -1] != 0).reshape(len(synonym_to_class), -1).any(axis=1)
    return [class_names[i] for i in sorted({synonym_to_class[s] for s in np.flatnonzero(full)})]


def warn_truncated_names(truncated: Sequence[str], stacklevel: int) -> None:
    """Warns (UserWarning) about the names :func:`truncated_names` found, if any; ``stacklevel`` as
    :func:`warnings.warn`'s, counted from the caller of this function."""
    if truncated:
        warnings.warn(
            f"these class names do not fit the text encoder's context once put in a prompt template and are cut "
            f"off (similar long names may get the same embedding): {list(truncated)}",
            stacklevel=stacklevel + 1,
        )
