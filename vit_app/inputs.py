"""Turn command-line PATH arguments (files, folders, glob patterns) into images, batch by batch, with errors kept."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import torch
from PIL import Image

from vit_app.data.images import IMAGE_EXTENSIONS, ImageLoadError, is_image_file, load_image
from vit_app.errors import UserError


@dataclass
class Item:
    """One input: its path and, once loaded, the image and model tensor, or the reason it failed."""

    path: str
    image: Image.Image | None = None
    tensor: torch.Tensor | None = None
    error: str | None = None


class Counts(NamedTuple):
    """What a command over PATH arguments did."""

    done: int
    failed: int
    skipped: int  # files a folder scan passed over (not an image type vit-app reads)


class Inputs(NamedTuple):
    paths: list[str]  # the image files, in a deterministic order
    missing: list[Item]  # arguments that match nothing, each with its reason
    skipped: list[str]  # files a folder scan passed over: not an image type vit-app reads


def expand_inputs(args: Iterable[str]) -> Inputs:
    """The image files named by PATH arguments.

    Files are taken as given (whatever their extension: a bad file is reported, not skipped); folders are searched
    recursively for image extensions, sorted, and every other file is listed in `skipped`; glob patterns expand
    sorted. Duplicates are kept once."""
    paths: list[str] = []
    missing: list[Item] = []
    skipped: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            paths.append(p)

    for arg in args:
        if os.path.isdir(arg):
            found = []
            for dirpath, dirnames, filenames in os.walk(arg, followlinks=True):
                dirnames.sort()
                for f in sorted(filenames):
                    (found if is_image_file(f) else skipped).append(os.path.join(dirpath, f))
            for p in sorted(found):
                add(p)
        elif os.path.exists(arg) or os.path.islink(arg):
            add(arg)
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            files = [m for m in matches if os.path.isfile(m)]
            if not files:
                missing.append(Item(arg, error="no files match this pattern"))
            for p in files:
                add(p)
        else:
            missing.append(Item(arg, error="no such file or folder"))
    return Inputs(paths, missing, skipped)


def describe_skipped(skipped: list[str], shown: int = 10) -> str:
    """'3 files skipped (not an image type vit-app reads: .svg, .txt): a.svg, b.svg, notes.txt'."""
    kinds = sorted({os.path.splitext(p)[1].lower() or "no extension" for p in skipped})
    names = ", ".join(skipped[:shown]) + (f", ... and {len(skipped) - shown} more" if len(skipped) > shown else "")
    return f"{len(skipped)} files skipped (not an image type vit-app reads: {', '.join(kinds)}): {names}"


def require_images(found: Inputs, args: Iterable[str]) -> None:
    """UserError when the arguments name no image at all: a missing path, an empty folder, only other files."""
    if found.paths:
        return
    where = " ".join(args)
    if found.missing and not found.skipped:
        reasons = "; ".join(f"{m.path}: {m.error}" for m in found.missing)
        raise UserError(f"no images to read: {reasons}")
    extra = f"; {describe_skipped(found.skipped)}" if found.skipped else ""
    raise UserError(f"{where}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)}){extra}")


def load_items(
    paths: list[str], transform: Callable[[Image.Image], torch.Tensor], pool: ThreadPoolExecutor | None = None
) -> list[Item]:
    """Load and transform each path; a failure becomes an Item with `error` set, never an exception."""

    def one(p: str) -> Item:
        try:
            img = load_image(p)
            return Item(p, img, transform(img))
        except ImageLoadError as e:
            return Item(p, error=e.reason(p))
        except Exception as e:  # a transform failing on an odd image must not end the run
            return Item(p, error=f"{type(e).__name__}: {e}")

    return list(pool.map(one, paths)) if pool is not None else [one(p) for p in paths]


def iter_batches(
    paths: list[str], transform: Callable[[Image.Image], torch.Tensor], batch_size: int, workers: int = 2
) -> Iterator[list[Item]]:
    """Yield lists of loaded Items, `batch_size` paths at a time (the next batch decodes while this one runs)."""
    if not paths:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        pending = pool.submit(load_items, chunks[0], transform)
        for i in range(len(chunks)):
            items = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(load_items, chunks[i + 1], transform)
            yield items


def stack_ok(items: list[Item]) -> tuple[list[Item], torch.Tensor | None]:
    """The items that loaded and their tensors stacked (B, C, H, W), or None when none did."""
    ok = [it for it in items if it.error is None and it.tensor is not None]
    return ok, (torch.stack([it.tensor for it in ok]) if ok else None)  # type: ignore[misc]
