"""Unpickling that cannot run code, for the pickles users download by hand (Detectron2 ``.pkl`` weights, the
ADE20K index).

A pickle names the callables it needs by module and name, and plain ``pickle.load`` imports and calls whatever it
names (``os.system`` included). :func:`load_restricted_pickle` admits only the few names that weight files and
dataset indexes need, so that a pickle can build dicts, lists, tuples, strings, bytes, numbers, numpy arrays,
numpy dtypes and numpy scalars, and nothing else.
"""

import pickle
from typing import IO, Any

__all__ = ["ForbiddenPickleError", "load_restricted_pickle"]

# numpy keeps its pickle helpers in numpy.core (1.x; 2.x still writes these names for compatibility) or numpy._core.
_NUMPY_CORE = ("numpy.core", "numpy._core")
_ALLOWED = frozenset(
    # an ndarray: _reconstruct(ndarray, shape, dtype) then setstate; protocol 5 writes _frombuffer(buffer, ...)
    [(f"{core}.multiarray", "_reconstruct") for core in _NUMPY_CORE]
    + [(f"{core}.numeric", "_frombuffer") for core in _NUMPY_CORE]
    # a numpy scalar (np.float32(1.0)): scalar(dtype, bytes)
    + [(f"{core}.multiarray", "scalar") for core in _NUMPY_CORE]
    + [
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # bytes written by Python 3 at protocol 2 (the Detectron2 model zoo's .pkl files) are _codecs.encode(str)
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    ]
)


class ForbiddenPickleError(pickle.UnpicklingError):
    """The pickle refers to a callable outside the admitted ones: loading it could run arbitrary code."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise ForbiddenPickleError(
                f"it refers to {module}.{name}; only dicts, lists, strings, numbers and numpy arrays are admitted "
                "(a pickle that names other callables can run code when loaded)"
            )
        return super().find_class(module, name)


def load_restricted_pickle(f: IO[bytes], encoding: str = "ASCII") -> Any:
    """``pickle.load(f)`` for data-only pickles.

    Args:
        f: a binary file object.
        encoding: how to decode Python 2 ``str`` objects (``"latin1"`` for Detectron2's Python 2 era files).

    Raises:
        ForbiddenPickleError: the pickle names a callable other than the numpy and container helpers above.
        pickle.UnpicklingError, EOFError: the file is not a complete pickle, or its admitted callables were given
            arguments they refuse (an unknown text encoding, state for an immutable type, ...).
    """
    try:
        return _RestrictedUnpickler(f, encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError):
        raise
    except Exception as e:
        # A crafted pickle can make an admitted callable raise anything (LookupError from _codecs.encode, TypeError
        # from setting state on numpy.dtype, ...): to the caller, who names the file, it is an unreadable pickle.
        raise pickle.UnpicklingError(f"malformed pickle ({type(e).__name__}: {e})") from e
