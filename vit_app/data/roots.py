"""Where each dataset lives under its root folder, and what to tell a user whose root is not that."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}  # what a CIFAR root holds


def root_hint(
    root: str | os.PathLike | None,
    kind: str,
    *folders: str,
    use: Callable[[str], str] = lambda other: f"data.dataset {other}?",
) -> str:
    """Why `root` lacks `folders` (what dataset `kind` reads in it), for an error message: it is missing, a file,
    one of those folders itself (give the parent), or another dataset's layout (`use(that kind)`: what to do about
    it, for "cifar10", "cifar100" or "imagefolder"). "" when none of these."""
    p = Path(os.path.expanduser(root or "")).absolute()
    if not p.exists():
        return f" ('{root}' does not exist)"
    if not p.is_dir():
        return f" ('{root}' is a file, not a folder)"
    if p.name in folders:
        return f" (it is {p.name}/ itself: give its parent, '{p.parent}')"
    other = [k for k, f in CIFAR_FOLDERS.items() if k != kind and (p / f).is_dir()]
    if other:
        return f" ('{root}' holds {CIFAR_FOLDERS[other[0]]}/: {use(other[0])})"
    if kind != "imagefolder" and (p / "train").is_dir():
        return f" ('{root}' holds train/: {use('imagefolder')})"
    return ""
