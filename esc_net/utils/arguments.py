"""Checks of constructor arguments that a config key sets, with messages that name the key.

Each module checks the values it reads, once, where it reads them; the message names the config key (the name a
YAML user sets; a LazyConfig user sets the argument of the same meaning).
"""

from typing import Any, Sequence

__all__ = ["check_choice", "check_minimum", "check_subset"]


def check_choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raises ValueError naming ``key``, ``value`` and the ``allowed`` values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")


def check_minimum(key: str, value: float, minimum: float) -> None:
    """Raises ValueError naming ``key`` and ``value`` unless ``value >= minimum``."""
    if value < minimum:
        raise ValueError(f"{key} must be at least {minimum}, got {value}")


def check_subset(key: str, values: Sequence[Any], allowed: Sequence[Any]) -> Sequence[Any]:
    """Returns ``values`` if they are distinct entries of ``allowed`` (none at all included); otherwise raises
    ValueError naming ``key``, ``values`` and the ``allowed`` entries."""
    if any(v not in allowed for v in values) or len(set(values)) != len(values):
        raise ValueError(f"{key} must be a list of distinct entries of {list(allowed)}, got {list(values)}")
    return values
