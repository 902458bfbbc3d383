"""Where the datasets live: the one rule every loader, preparation command and generator follows."""

import os
from pathlib import Path
from typing import Optional, Union

__all__ = ["DEFAULT_DATASET_ROOT", "dataset_root"]

DEFAULT_DATASET_ROOT = "datasets"


def dataset_root(root: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The dataset root: ``root``, else ``$DETECTRON2_DATASETS``, else ``./datasets`` (Detectron2's convention).

    None and the empty string both mean "not given", for ``root`` and for the variable alike, so that
    ``--root ""`` or ``DETECTRON2_DATASETS=`` fall through to the next choice instead of meaning the working
    directory. A leading ``~`` is expanded, as Detectron2 does. The result may be relative (to the working
    directory); it is not checked for existence.
    """
    for candidate in (root, os.environ.get("DETECTRON2_DATASETS")):
        if candidate not in (None, ""):
            return Path(os.path.expanduser(candidate))
    return Path(DEFAULT_DATASET_ROOT)
