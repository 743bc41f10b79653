"""Test-time augmentation: logits averaged over fixed views of each image. An evaluation option only; training
never sees it and a checkpoint does not change with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

TTA = Literal["none", "flip"]
TTA_CHOICES: tuple[str, ...] = ("none", "flip")


def tta_logits(model: Callable[[Tensor], Tensor], x: Tensor, tta: str = "none") -> Tensor:
    """Logits (B, C) of a normalised batch x (B, 3, H, W). "flip": the mean of the logits of x and of its left-right
    mirror (a view the training augmentation also shows), in one forward pass of 2B images; "none": model(x)."""
    if tta == "none":
        return model(x).float()
    if tta == "flip":
        both = model(torch.cat([x, x.flip(-1)])).float()  # (2B, C): the batch, then its mirror
        return 0.5 * (both[: len(x)] + both[len(x) :])
    raise ValueError(f"tta: unknown test-time augmentation {tta!r}; choose one of: {', '.join(TTA_CHOICES)}")
