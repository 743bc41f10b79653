"""Test-time augmentation: logits averaged over fixed views of each image. An evaluation option only; training
never sees it and a checkpoint does not change with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

TTA = Literal["none", "flip", "flip_shift"]
TTA_CHOICES: tuple[str, ...] = ("none", "flip", "flip_shift")
TTA_VIEWS: dict[str, int] = {"none": 1, "flip": 2, "flip_shift": 18}  # forward passes per image


def view_shift(patch_size: int) -> int:
    """The pixels "flip_shift" moves an image by: a quarter of the patch side, at least 1 (1 px for 4-px patches,
    the size it was measured at). What the views change is where the patch grid falls on the image."""
    return max(1, patch_size // 4)


def shifted(x: Tensor, dx: int, dy: int) -> Tensor:
    """x (B, C, H, W) moved by dx pixels right and dy down, the edge filled by reflection (as the training crops
    pad): the window of the reflect-padded image that starts at (pad - dy, pad - dx)."""
    if dx == 0 and dy == 0:
        return x
    p = max(abs(dx), abs(dy))
    return _window(F.pad(x, (p, p, p, p), mode="reflect"), p, dx, dy, x.shape[-2:])


def _window(padded: Tensor, p: int, dx: int, dy: int, size: tuple[int, ...]) -> Tensor:
    """The (H, W) window of an image reflect-padded by p that shows it moved by (dx, dy)."""
    H, W = size
    return padded[..., p - dy : p - dy + H, p - dx : p - dx + W]


def tta_logits(model: Callable[[Tensor], Tensor], x: Tensor, tta: str = "none", shift: int = 1) -> Tensor:
    """Logits (B, C) of a normalised batch x (B, 3, H, W), averaged over the views of `tta`:
    "none": x itself; "flip": x and its left-right mirror (one forward pass of 2B images);
    "flip_shift": x moved by -shift, 0 and +shift pixels in each direction (3 x 3 positions), each also mirrored:
    18 views, one forward pass of B images each (`shift`: view_shift of the model's patch size)."""
    if tta == "none":
        return model(x).float()
    if tta == "flip":
        both = model(torch.cat([x, x.flip(-1)])).float()  # (2B, C): the batch, then its mirror
        return 0.5 * (both[: len(x)] + both[len(x) :])
    if tta == "flip_shift":
        if shift < 1:
            raise ValueError(f"tta: shift must be at least 1 pixel, got {shift}")
        total: Tensor | None = None
        padded = F.pad(x, (shift,) * 4, mode="reflect")  # once for the 8 moved views: (B, C, H + 2s, W + 2s)
        for dy in (-shift, 0, shift):
            for dx in (-shift, 0, shift):
                view = x if dx == dy == 0 else _window(padded, shift, dx, dy, x.shape[-2:])
                for v in (view, view.flip(-1)):
                    out = model(v).float()  # (B, C)
                    total = out if total is None else total + out
        assert total is not None
        return total / TTA_VIEWS["flip_shift"]
    raise ValueError(f"tta: unknown test-time augmentation {tta!r}; choose one of: {', '.join(TTA_CHOICES)}")
