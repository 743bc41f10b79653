"""ImageFolder datasets (root/<split>/<class>/<image>) with an optional class-subset file, e.g. ImageNet wnids."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from vit_app.data.images import ImageLoadError, is_image_file, load_image
from vit_app.errors import ConfigError


@dataclass(frozen=True)
class BadImage:
    """Stands in for an image that could not be read; the batch drops it (never replaced by another sample)."""

    path: str
    reason: str


def collate_skipping_bad(samples: list[tuple[Any, int]]) -> tuple[Any, ...]:
    """default_collate over the readable samples. With unreadable ones in the batch it returns
    (x, y, [(path, reason), ...]) so that training can count and report them; x and y hold only the good ones."""
    bad = [(s[0].path, s[0].reason) for s in samples if isinstance(s[0], BadImage)]
    if not bad:
        return tuple(default_collate(samples))
    good = [s for s in samples if not isinstance(s[0], BadImage)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    x, y = default_collate(good)
    return x, y, bad


def read_class_subset(path: str | os.PathLike) -> list[str]:
    """Class folder names from a file, one a line; blank lines and `#` comments are skipped."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data.class_subset: file '{p}' does not exist")
    names = [line.split("#", 1)[0].strip() for line in p.read_text().splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"data.class_subset: '{p}' lists no classes (one class folder name a line, e.g. n01440764)")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"data.class_subset: '{p}' lists classes more than once: {', '.join(dup)}")
    return names


def find_classes(split_dir: str | os.PathLike, subset: list[str] | None = None, keep_order: bool = False) -> list[str]:
    """Sorted class folder names under `split_dir`, restricted to `subset` when given (in its own order with
    `keep_order`: a model's classes)."""
    d = Path(split_dir)
    if not d.is_dir():
        raise ConfigError(f"data.root: folder '{d}' does not exist (expected <root>/<split>/<class>/<image>)")
    present = sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
    if subset is None:
        if not present:
            raise ConfigError(f"data.root: '{d}' has no class folders (expected <root>/<split>/<class>/<image>)")
        return present
    missing = [c for c in subset if c not in present]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        key = "data.class_names" if keep_order else "data.class_subset"
        raise ConfigError(f"{key}: classes not found in '{d}': {', '.join(missing[:5])}{more}")
    return list(subset) if keep_order else sorted(subset)


class ImageFolderDataset(Dataset):
    """Images under split_dir/<class>/ for the given classes (label = index in `classes`); files in sorted order."""

    def __init__(self, split_dir: str | os.PathLike, classes: list[str], transform: Callable | None = None) -> None:
        self.root = Path(split_dir)
        self.classes = list(classes)
        self.transform = transform
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            cdir = self.root / name
            if not cdir.is_dir():
                raise ConfigError(f"data.root: class folder '{cdir}' is missing")
            for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
                dirnames.sort()
                self.samples += [(os.path.join(dirpath, f), label) for f in sorted(filenames) if is_image_file(f)]
        if not self.samples:
            raise ConfigError(f"data.root: no images under '{self.root}' (extensions: jpg, png, webp, bmp, gif, tiff)")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            img = load_image(path)
        except ImageLoadError as e:  # reported by the training loop; the batch goes on without it
            return BadImage(path, e.reason(path)), label
        return (self.transform(img) if self.transform else img), label
