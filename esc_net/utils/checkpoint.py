"""ESC-Net's checkpointer: Detectron2's, made safe to load untrusted files and to be killed at any moment.

* Loading never runs code from the file: ``.pth``/``.pyth`` files are read with ``torch.load(weights_only=True)``
  and ``.pkl`` files (Detectron2's model zoo format) with a restricted unpickler (:mod:`.safe_pickle`).
* A file that cannot be read (empty, truncated, not a checkpoint, or asking to run code) raises
  :class:`UnreadableCheckpointError`, which names the file.
* Checkpoints and the ``last_checkpoint`` pointer are written to a temporary file that is flushed, synced and
  renamed over the target, so a kill leaves either the old file or the new one, never a partial one.
* ``resume_or_load`` skips unreadable checkpoints with a warning and resumes from the newest one that reads.
"""

import contextlib
import logging
import os
import pickle
import zipfile
from typing import Any, Dict, Iterator, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from safetensors import SafetensorError

from esc_net.utils.safe_pickle import ForbiddenPickleError, load_restricted_pickle

__all__ = [
    "ESCNetCheckpointer",
    "UnreadableCheckpointError",
    "atomic_write",
    "load_model_weights",
    "check_weights_fit",
    "read_checkpoint_file",
    "unreadable_weights_error",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
_TMP_SUFFIX = ".tmp"


class UnreadableCheckpointError(ValueError):
    """A weights file that cannot be read: empty, truncated, not a checkpoint, or a pickle that would run code."""


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[Any]:
    """Opens ``path + ".tmp"`` for writing; on success flushes, fsyncs and renames it to ``path``.

    Readers (and a process that restarts after a kill) see the old file or the complete new one. On an exception
    the temporary file is removed and the exception propagates.
    """
    tmp = path + _TMP_SUFFIX
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    # The rename itself is durable only once the folder's entry is on disk.
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class _AtomicWrites:
    """Detectron2's PathManager, except that files opened for writing are written with :func:`atomic_write`.

    fvcore's ``Checkpointer.save`` and ``tag_last_checkpoint`` write through ``self.path_manager.open``; routing
    that through this class makes both atomic without re-implementing them.
    """

    def open(self, path: str, mode: str = "r", **kwargs):
        if "w" in mode:
            return atomic_write(path, mode)
        return PathManager.open(path, mode, **kwargs)

    def __getattr__(self, name: str):
        return getattr(PathManager, name)


# What torch.load, the restricted unpickler and safetensors raise for a file that is not a complete weights file.
READ_ERRORS = (EOFError, pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, SafetensorError)


def unreadable_weights_error(path: str, error: BaseException) -> UnreadableCheckpointError:
    """The error to raise when reading the weights file ``path`` failed with ``error``: it names the file and
    says whether it is empty, damaged, or refused because it asks to run code."""
    if isinstance(error, ForbiddenPickleError) or "Weights only load failed" in str(error):
        # torch's message is mostly advice to load with weights_only=False, exactly what must not be done here;
        # the line naming the refused global is what the user needs.
        lines = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "refers to" in line]
        return UnreadableCheckpointError(
            f"refusing to load the weights file {path}: it asks to run code while loading "
            f"({lines[0] if lines else error}); weight files hold only tensors, arrays, numbers and strings"
        )
    size = os.path.getsize(path)
    if size == 0:
        return UnreadableCheckpointError(
            f"cannot read the weights file {path}: it is empty (0 bytes), e.g. written by a process that was killed"
        )
    return UnreadableCheckpointError(
        f"cannot read the weights file {path} ({size} bytes; truncated, corrupt or not a weights file): "
        f"{type(error).__name__}: {error}"
    )


def read_checkpoint_file(path: str) -> Dict[str, Any]:
    """The raw content of a weights file, read without running code from it.

    ``.pkl``: a restricted unpickle (numpy arrays, dicts, lists, strings, numbers); every other suffix:
    ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnreadableCheckpointError: the file is empty, truncated, not a weights file, or asks to run code.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model weights not found: {path}")
    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                data = load_restricted_pickle(f, encoding="latin1")  # latin1: Detectron2's Python 2 era files
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except READ_ERRORS as error:
        raise unreadable_weights_error(path, error) from error
    if not isinstance(data, dict):
        raise UnreadableCheckpointError(f"the weights file {path} holds a {type(data).__name__}, not a dict")
    return data


class ESCNetCheckpointer(DetectionCheckpointer):
    """Detectron2's ``DetectionCheckpointer`` with safe loading, atomic saving and resuming past damaged files.

    Used everywhere ESC-Net reads or writes a checkpoint (training, ``--eval-only``, the predictor and demo).

    Attributes:
        incompatible: the keys that did not fit at the last load (Detectron2 only logs them).
        resumed_from: the checkpoint :meth:`resume_or_load` resumed from, or None.
    """

    def __init__(self, model, save_dir: str = "", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.path_manager = _AtomicWrites()
        self.incompatible = None
        self.resumed_from: Optional[str] = None

    # -- reading ----------------------------------------------------------------------------------------------
    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # Detectron2 leaves this set when loading raises, and asserts that it is unset at the next load.
            self._parsed_url_during_load = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """The checkpoint as Detectron2 expects it (``{"model": ...}``), read by :func:`read_checkpoint_file`."""
        if filename.endswith(".pkl"):
            data = read_checkpoint_file(filename)
            if "model" in data and "__author__" in data:  # Detectron2 model zoo format
                return data
            # Caffe2 / Detectron1 format: the blobs, converted by Detectron2's name matching
            blobs = data.get("blobs", data)
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls format
            data = read_checkpoint_file(filename)
            if "model_state" not in data:
                raise UnreadableCheckpointError(f"{filename} is not a pycls checkpoint: it has no 'model_state'")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)  # goes through _torch_load

    def _torch_load(self, f: str) -> Dict[str, Any]:
        return read_checkpoint_file(f)

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    # -- resuming ---------------------------------------------------------------------------------------------
    def resume_candidates(self) -> List[str]:
        """Checkpoints to resume from, best first: the one ``last_checkpoint`` names, then every other
        ``*.pth`` in the folder, newest first."""
        files = sorted(self.get_all_checkpoint_files(), key=os.path.getmtime, reverse=True)
        pointer = os.path.join(self.save_dir, LAST_CHECKPOINT)
        named = self.get_checkpoint_file() if os.path.isfile(pointer) else ""
        if named in files:
            files.remove(named)
            files.insert(0, named)
        elif os.path.isfile(pointer):
            logger.warning(
                f"{pointer} names {os.path.basename(named)!r}, which is not a checkpoint in {self.save_dir} "
                "(the pointer is empty or stale); looking for the newest readable checkpoint instead"
            )
        return files

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Like Detectron2's: with ``resume``, loads everything from the newest readable checkpoint of
        ``save_dir`` (skipping unreadable ones with a warning); otherwise, or when there is none, loads only the
        model from ``path``."""
        self.resumed_from = None
        if resume:
            for candidate in self.resume_candidates():
                try:
                    checkpoint = self.load(candidate)
                except UnreadableCheckpointError as error:
                    logger.warning(f"skipping a checkpoint that cannot be resumed from: {error}")
                    continue
                self.resumed_from = candidate
                return checkpoint
        return self.load(path, checkpointables=[])


def load_model_weights(model: torch.nn.Module, path: str) -> None:
    """Loads a Detectron2 checkpoint (``model_final.pth``) into ``model`` and insists that it fits.

    Training resumes with Detectron2's lenient ``resume_or_load``; evaluation and the demo use this instead,
    because a checkpoint that misses weights would silently score with random ones.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnreadableCheckpointError: the file is empty, truncated, not a checkpoint or a pickle that would run code.
        ValueError: the checkpoint does not fit; the message lists the missing, unexpected and mis-shaped keys.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model weights not found: {path}")
    checkpointer = ESCNetCheckpointer(model)
    checkpointer.load(path, checkpointables=[])
    check_weights_fit(checkpointer.incompatible, path)


def check_weights_fit(incompatible, path: str) -> None:
    """Raises ValueError listing the missing, unexpected and mis-shaped keys of a load (none: returns)."""
    problems = []
    if incompatible.missing_keys:
        problems.append(f"missing keys: {sorted(incompatible.missing_keys)}")
    if incompatible.unexpected_keys:
        problems.append(f"unexpected keys: {sorted(incompatible.unexpected_keys)}")
    if incompatible.incorrect_shapes:
        shapes = [f"{k} (checkpoint {tuple(a)}, model {tuple(b)})" for k, a, b in incompatible.incorrect_shapes]
        problems.append(f"keys with other shapes: {shapes}")
    if problems:
        raise ValueError(f"the weights in {path} do not fit this model's config; " + "; ".join(problems))
