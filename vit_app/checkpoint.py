"""One safe way to read and write model files: weights_only loading, never a fallback; atomic, fsynced writes.
No Lightning here: inference reads checkpoints through this module too."""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vit_app.errors import CheckpointError

# What a file is, from its first bytes, when it is not a PyTorch checkpoint (a zip archive, or a legacy pickle).
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF file (a WebP image or a WAV sound)"),
    (b"%PDF", "a PDF document"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x89HDF", "an HDF5 file (a Keras model?)"),
    (b"\x08", "an ONNX model (or another protobuf file)"),
)


def _sniff(path: str) -> str | None:
    """What the file looks like when it cannot be a PyTorch checkpoint; None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None  # torch.save's zip archive, or its legacy pickle format
    if len(head) >= 10 and head[8:10] == b'{"':
        return "a safetensors file (give it a .safetensors name)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8").lstrip()
    except UnicodeDecodeError:
        return "a file of unknown content"
    if text.startswith(("{", "[")):
        return "a JSON file"
    return "a text file" if text else "a file of whitespace"


def _load_error(p: str, e: Exception) -> str:
    """One line on why torch.load failed, for a file that looked like a checkpoint. Never suggests unsafe loading."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        glob = re.search(r"GLOBAL ([\w.]+)", text)
        if glob:
            return (
                f"{p}: refused: it holds Python objects ({glob.group(1)}) that would run code when loaded; vit-app "
                "reads model files as tensors and plain data only. Re-save the weights where you trust the code: "
                "torch.save(model.state_dict(), path)"
            )
        return f"{p}: not a PyTorch checkpoint (a pickle file without PyTorch's header)"
    if isinstance(e, (EOFError, OSError)) or "central directory" in text or "failed reading" in text:
        return f"{p}: truncated or damaged: the file ends before the checkpoint does (copy or download it again)"
    if isinstance(e, KeyError):
        return f"{p}: not a PyTorch checkpoint"
    if "data.pkl" in text or "not in a subdirectory" in text or "archive" in text:
        return f"{p}: a zip archive, not a PyTorch checkpoint"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return f"{p}: not a readable PyTorch checkpoint ({first[:200]})"


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True: tensors and plain containers only. A file that is not a checkpoint, or
    that would need to run code while unpickling, is refused with CheckpointError naming it and the reason; there is
    no fallback to unsafe loading."""
    p = str(path)
    if "://" in p:
        raise CheckpointError(f"{p}: only local checkpoint files are loaded; download it first")
    if os.path.isdir(p):
        raise CheckpointError(f"{p}: is a folder, not a checkpoint file (e.g. .../checkpoints/best.ckpt)")
    if not os.path.isfile(p):
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        if os.path.getsize(p) == 0:
            raise CheckpointError(f"{p}: empty file, not a checkpoint")
        what = _sniff(p)
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read file ({e.strerror or e})") from None
    if what is not None:
        raise CheckpointError(f"{p}: not a PyTorch checkpoint: it looks like {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols concern it, not the user
            obj = torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        raise CheckpointError(_load_error(p, e)) from None
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
