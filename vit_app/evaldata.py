"""The --data argument of `calibrate` and `explain-eval`: one parser, one meaning, the same checks for both.

    synthetic          the built-in shapes (validation stream), with each object's mask
    cifar10:ROOT       the CIFAR-10 test split; ROOT holds cifar-10-batches-py/ (cifar100:ROOT likewise)
    folder:DIR, DIR    DIR/<class>/<image>, the model's class names as folders (labels); explain-eval, which needs
                       none, takes every image under DIR
    FILES / GLOBS      images without labels (explain-eval)

Data with labels must have the model's classes: another class count is refused, naming both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image

from vit_app.data.roots import CIFAR_FOLDERS, root_hint
from vit_app.errors import ConfigError, UserError

if TYPE_CHECKING:
    from vit_app.card import ModelCard

Kind = Literal["synthetic", "cifar10", "cifar100", "folder", "images"]
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
FORMS = "synthetic, cifar10:ROOT, cifar100:ROOT, folder:DIR (or DIR), or image files and globs"


@dataclass(frozen=True)
class EvalData:
    kind: Kind
    root: str | None = None
    paths: tuple[str, ...] = ()
    spec: str = ""  # as the user gave it, for messages

    def describe(self) -> str:
        if self.kind == "synthetic":
            return "synthetic shapes"
        if self.kind in CIFAR_FOLDERS:
            return f"{self.kind} test split"
        return str(self.root) if self.kind == "folder" else " ".join(self.paths)


@dataclass
class Sample:
    image: Image.Image
    label: int | None = None
    mask: np.ndarray | None = None  # (H, W) bool, the object (synthetic data only)


def parse_data(spec: str | list[str]) -> EvalData:
    """EvalData for a --data value (see the module doc), or ConfigError saying which form was meant."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    if not parts or not all(parts):
        raise ConfigError(f"--data: give one of {FORMS}")
    if len(parts) == 1:
        one = parts[0]
        kind, sep, rest = one.partition(":")
        if one == "synthetic":
            return EvalData("synthetic", spec=one)
        if kind in CIFAR_FOLDERS:
            if not sep or not rest:
                raise ConfigError(f"--data {one}: give the folder that holds {CIFAR_FOLDERS[kind]}/, as {kind}:ROOT")
            root = os.path.expanduser(rest)
            if not (Path(root) / CIFAR_FOLDERS[kind]).is_dir():
                hint = root_hint(root, kind, CIFAR_FOLDERS[kind], use=lambda other: f"--data {spec_for(other, root)}?")
                raise ConfigError(
                    f"--data {one}: '{Path(root) / CIFAR_FOLDERS[kind]}' does not exist{hint}; ROOT is the folder that "
                    f"holds {CIFAR_FOLDERS[kind]}/"
                )
            return EvalData(kind, root, spec=one)  # type: ignore[arg-type]
        if kind == "folder" and sep:
            root = os.path.expanduser(rest)
            if not os.path.isdir(root):
                raise ConfigError(f"--data {one}: folder '{root}' does not exist")
            return EvalData("folder", root, spec=one)
        if os.path.isdir(one):
            return EvalData("folder", one, spec=one)
        if kind in ("synthetic", "folder", "cifar", "imagenet", "imagefolder") and not os.path.exists(one):
            raise ConfigError(f"--data {one}: not a data set vit-app knows; give one of {FORMS}")
    return EvalData("images", paths=tuple(parts), spec=" ".join(parts))


def spec_for(kind: str, root: str | os.PathLike) -> str:
    """The --data form for the test split of dataset `kind` (as data.dataset names it) kept under root: a CIFAR
    test split, an image-folder tree's val/, or the synthetic set's validation stream."""
    if kind == "synthetic":
        return "synthetic"
    return f"{kind}:{root}" if kind in CIFAR_FOLDERS else f"folder:{Path(root) / 'val'}"


def data_of(card: ModelCard) -> str:
    """The --data a model's own card points to: the data it was trained on (its test or validation split)."""
    prov = card.provenance
    root = prov.data_root
    inside = CIFAR_FOLDERS.get(prov.dataset or "") or ("val" if prov.dataset == "imagefolder" else None)
    if prov.dataset == "synthetic" or (inside and root and (Path(root) / inside).is_dir()):
        return spec_for(prov.dataset, root or "")  # type: ignore[arg-type]
    where = f" ({prov.dataset} at {root})" if prov.dataset else ""
    raise ConfigError(f"--data: give the images to score; the model's card names no data found here{where}")


def _some(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _check_classes(data: EvalData, data_classes: list[str] | int, model_classes: list[str]) -> None:
    n = data_classes if isinstance(data_classes, int) else len(data_classes)
    if n != len(model_classes):
        shown = "" if isinstance(data_classes, int) else f" ({_some(data_classes)})"
        raise ConfigError(
            f"--data {data.spec}: the {data.describe()} has {n} classes{shown}, but the model has "
            f"{len(model_classes)} ({_some(model_classes)}); give data with the model's classes"
        )


def open_data(
    data: EvalData, class_names: list[str], img_size: int, limit: int, labels: bool, synthetic_seed: int = 2000
) -> tuple[int, Iterator[Sample]]:
    """(how many samples, the samples) of `data`, at most `limit`; with `labels`, only data that has them. Synthetic
    data comes from the stream `synthetic_seed` (2000: the DataModule's validation stream at data seed 0)."""
    if data.kind == "synthetic":
        from vit_app.data.synthetic import SHAPES, SyntheticShapes

        _check_classes(data, list(SHAPES), class_names)
        ds = SyntheticShapes(limit, seed=synthetic_seed, img_size=img_size)

        def synthetic() -> Iterator[Sample]:
            for i in range(limit):
                img, label, mask = ds.sample(i)
                yield Sample(Image.fromarray(img), label, mask)

        return limit, synthetic()
    if data.kind in CIFAR_FOLDERS:
        from torchvision.datasets import CIFAR10, CIFAR100

        _check_classes(data, CIFAR_CLASSES[data.kind], class_names)
        try:
            ds = (CIFAR10 if data.kind == "cifar10" else CIFAR100)(data.root, train=False, download=False)
        except RuntimeError as e:  # torchvision's integrity check
            raise ConfigError(f"--data {data.spec}: the data set is incomplete or damaged ({e})") from None
        n = min(limit, len(ds))
        return n, (Sample(*ds[i]) for i in range(n))
    if data.kind == "folder" and labels:
        from vit_app.data.folder import ImageFolderDataset

        present = sorted(e.name for e in os.scandir(data.root) if e.is_dir())  # type: ignore[arg-type]
        missing = [c for c in class_names if c not in present]
        if missing:
            raise ConfigError(
                f"--data {data.spec}: labels come from one sub-folder a class, named as the model's classes; "
                f"missing: {_some(missing)} (found: {_some(present) or 'no sub-folders'})"
            )
        ds = ImageFolderDataset(data.root, class_names)  # type: ignore[arg-type]
        n = min(limit, len(ds))
        return n, (Sample(img, label) for img, label in (ds[i] for i in range(n)) if isinstance(img, Image.Image))
    if labels:
        raise ConfigError(
            f"--data {data.spec}: this needs labelled images: synthetic, cifar10:ROOT, cifar100:ROOT, or "
            "folder:DIR with one sub-folder a class"
        )
    from vit_app.inputs import expand_inputs, require_images

    args = [data.root] if data.kind == "folder" else list(data.paths)
    found = expand_inputs(args)  # type: ignore[arg-type]
    try:
        require_images(found, args)  # type: ignore[arg-type]
    except UserError as e:
        raise ConfigError(f"--data: {e}") from None
    paths = found.paths

    def files() -> Iterator[Sample]:
        from vit_app.data.images import ImageLoadError, load_image
        from vit_app.progress import say

        for p in paths:
            try:
                yield Sample(load_image(p))
            except ImageLoadError as e:
                say(f"vit-app: skipped {e}")

    return min(limit, len(paths)), islice(files(), limit)


def batches(
    samples: Iterator[Sample], transform: Callable[[Image.Image], torch.Tensor], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
    """(x (B, 3, S, S), labels (B,) or None, masks (B, H, W) or None) batches."""
    while chunk := list(islice(samples, batch_size)):
        x = torch.stack([transform(s.image) for s in chunk])
        y = torch.tensor([s.label for s in chunk]) if all(s.label is not None for s in chunk) else None
        masks = [s.mask for s in chunk]
        m = torch.stack([torch.from_numpy(k) for k in masks]) if all(k is not None for k in masks) else None
        yield x, y, m
