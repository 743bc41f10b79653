"""One safe way to read and write model files: weights_only loading, never a fallback; atomic, fsynced writes.
No Lightning here: inference reads checkpoints through this module too."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vit_app.errors import CheckpointError


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True: tensors and plain containers only. A file that would need to run code
    while unpickling is refused with CheckpointError; there is no fallback to unsafe loading."""
    p = str(path)
    if "://" in p:
        raise CheckpointError(f"{p}: only local checkpoint files are loaded; download it first")
    if not os.path.isfile(p):
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported object"
        raise CheckpointError(
            f"{p}: refused: unpickling it would need more than plain tensors and containers ({reason}). "
            "vit-app loads checkpoints with weights_only=True only; re-save the file as a plain state dict."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a checkpoint dict, found {type(obj).__name__}")
    return obj


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write a file via a temporary file in the same folder, flushed and fsynced, then atomically replace `path`.
    A process killed mid-write leaves the previous file intact."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # the permissions a plain open() would give, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
