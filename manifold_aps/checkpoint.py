"""Safe, versioned checkpoint files.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists, dicts, None)
written with ``torch.save`` and read back with ``torch.load(..., weights_only=True)`` only, so a
file from elsewhere can never execute code when loaded. Every file carries a header:

    {"format": "manifold_aps", "format_version": 1, "package_version": "0.1.0", "kind": "...", ...}

``kind`` names what the payload is (``"training"`` for trainer state, ``"diffusion_prior"``, ...);
readers pass the kind they expect. Writes are atomic (temporary file in the same directory, then
``os.replace``), so an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["FORMAT_VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT_VERSION = 1
_HEADER_KEYS = ("format", "format_version", "package_version", "kind")


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used (corrupted, truncated, unsafe or wrong kind)."""


def _package_version() -> str:
    from manifold_aps import __version__  # late: this module is imported while the package initialises

    return __version__


def save_checkpoint(path, payload: dict, kind: str) -> Path:
    """Atomically write ``payload`` (tensors and plain values only) with a versioned header.

    Returns the path written. Raises :class:`TypeError` when ``payload`` holds an object that
    :func:`load_checkpoint` would refuse (checked by reading the bytes back before the rename).
    """
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    clash = set(_HEADER_KEYS) & set(payload)
    if clash:
        raise ValueError(f"payload keys {sorted(clash)} are reserved for the checkpoint header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": "manifold_aps", "format_version": FORMAT_VERSION,
              "package_version": _package_version(), "kind": str(kind), **payload}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(record, file)
            file.flush()
            os.fsync(file.fileno())
        try:  # refuse to write what could not be read back safely
            torch.load(temporary, map_location="cpu", weights_only=True)
        except Exception as error:
            raise TypeError(f"checkpoint payload is not weights-only loadable (store plain values and tensors): "
                            f"{error}") from None
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def load_checkpoint(path, kind: str | None = None, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: empty/truncated/corrupted file, a payload holding Python objects (code)
            that weights-only loading refuses, a file not written by manifold_aps, a newer format,
            or a ``kind`` other than the one asked for.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (truncated write?)")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        # a pickled reference to a Python callable/class ("GLOBAL module.name") is what weights-only
        # loading refuses; other unpickling failures are damaged bytes
        if "Weights only load failed" in str(error) and "GLOBAL" in str(error):
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled Python objects (possibly code) that are not "
                f"tensors or plain values; manifold_aps loads checkpoints with weights_only=True only"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated ({type(error).__name__}: {error})") from None
    if not isinstance(record, dict) or record.get("format") != "manifold_aps":
        raise CheckpointError(f"{path} is not a manifold_aps checkpoint (no manifold_aps header)")
    if int(record.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} uses checkpoint format {record['format_version']}, newer than this "
                              f"manifold_aps ({_package_version()}, format {FORMAT_VERSION}); upgrade the package")
    if kind is not None and record.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {record.get('kind')!r} checkpoint, expected {kind!r}")
    if record.get("package_version") != _package_version():
        warnings.warn(f"{path} was written by manifold_aps {record.get('package_version')}, "
                      f"this is {_package_version()}", stacklevel=2)
    return record
