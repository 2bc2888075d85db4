"""Safe, versioned checkpoint files.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists, dicts, None)
written with ``torch.save`` and read back with ``torch.load(..., weights_only=True)`` only, so a
file from elsewhere can never execute code when loaded. Every file carries a header:

    {"format": "manifold_aps", "format_version": 1, "package_version": "0.1.0", "kind": "...", ...}

``kind`` names what the payload is (``"training"`` for trainer state, ``"diffusion_prior"``, ...);
readers pass the kind they expect.

Writes go through :func:`atomic_write`: a temporary file in the same directory, then
``os.replace``, so an interrupted save leaves the previous file intact. A read-only file is never
replaced, new files get the permissions the umask allows (a replaced file keeps its own), and the
temporary files of a save killed earlier are removed by the next save of the same file.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from manifold_aps.version import __version__

__all__ = ["FORMAT_VERSION", "CheckpointError", "atomic_write", "save_checkpoint", "load_checkpoint"]

FORMAT_VERSION = 1
_HEADER_KEYS = ("format", "format_version", "package_version", "kind")


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used (corrupted, truncated, unsafe or wrong kind)."""


def _package_version() -> str:
    return __version__


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files that an earlier, killed save of ``path`` left behind (only ours: the
    name says which process wrote it, and only those of processes no longer alive go)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.saving-(\d+)-\w+\.tmp$")
    for candidate in path.parent.iterdir():
        match = pattern.match(candidate.name)
        if match and not _process_alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not saving this file right now: anything of ours is left over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _new_file_mode() -> int:
    umask = os.umask(0)  # the only portable way to read the umask is to set it and put it back
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write: Callable[[BinaryIO], None], check: Callable[[Path], None] | None = None) -> Path:
    """Write a file so that readers only ever see the old or the complete new version.

    ``write(file)`` fills a temporary file beside ``path``; ``check(temporary_path)`` may inspect
    it and raise to abort; then the file is fsynced and renamed over ``path``. The temporary file
    never outlives a failure, and leftovers of an earlier killed write are removed first. A new file
    gets mode ``0o666`` minus the umask; a replaced file keeps its mode.

    Raises:
        PermissionError: ``path`` exists but is read-only (no owner write bit, or not writable by
            this user), or its directory is not writable; the existing file is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if not (mode & stat.S_IWUSR) or not os.access(path, os.W_OK):
            raise PermissionError(f"refusing to replace {path}: the file is read-only (mode {mode:o}); it was kept as "
                                  f"it is. Make it writable (chmod u+w) or write to another path")
    else:
        mode = _new_file_mode()
    _remove_stale_temporaries(path)
    try:  # the writer's process id in the name tells a dead writer's leftovers from a save still running
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.saving-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    except PermissionError as error:
        raise PermissionError(f"cannot write {path}: no permission to create files in {path.parent} ({error})") from None
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
        if check is not None:
            check(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def save_checkpoint(path, payload: dict, kind: str) -> Path:
    """Atomically write ``payload`` (tensors and plain values only) with a versioned header.

    Returns the path written. See :func:`atomic_write` for what happens to an existing file.

    Raises:
        TypeError: ``payload`` holds an object that :func:`load_checkpoint` would refuse (checked
            by reading the bytes back before the rename).
        PermissionError: ``path`` is read-only (it is kept) or its folder is not writable.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    clash = set(_HEADER_KEYS) & set(payload)
    if clash:
        raise ValueError(f"payload keys {sorted(clash)} are reserved for the checkpoint header")
    record = {"format": "manifold_aps", "format_version": FORMAT_VERSION,
              "package_version": _package_version(), "kind": str(kind), **payload}

    def readable(temporary: Path):  # refuse to write what could not be read back safely
        try:
            torch.load(temporary, map_location="cpu", weights_only=True)
        except Exception as error:
            raise TypeError(f"checkpoint payload is not weights-only loadable (store plain values and tensors): "
                            f"{error}") from None

    return atomic_write(path, lambda file: torch.save(record, file), check=readable)


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
