"""The learning-rate schedule and the wall-clock budget: how far through training a run is, by steps or by time."""

from __future__ import annotations

import math
import time

LR_SCHEDULES = ("cosine", "linear")  # shapes of the decay after warm-up (model.lr_schedule)


def warmup_decay(
    step: int,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 0.0,
    progress: float | None = None,
    shape: str = "cosine",
    hold: float = 0.0,
) -> float:
    """LR multiplier: linear warm-up from ~0 to 1 over `warmup_steps`, then held at 1 for the first `hold` share of
    training, then down to `min_ratio` at the end along a cosine (`shape="cosine"`) or a straight line ("linear").
    `progress` in [0, 1], when given, replaces the step-based position (time-budgeted runs)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = progress if progress is not None else (step - warmup_steps) / max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, t - hold) / (1.0 - hold))  # position in the decay, 0 until `hold`
    decay = 0.5 * (1.0 + math.cos(math.pi * t)) if shape == "cosine" else 1.0 - t
    return min_ratio + (1.0 - min_ratio) * decay


class TrainingClock:
    """Share of training done: of a wall-clock budget (minutes, validation included) when there is one, else of the
    scheduled optimiser steps. The clock starts when training does."""

    def __init__(self, budget_min: float | None = None) -> None:
        self.budget_min = budget_min
        self.total_steps = 0
        self._start: float | None = None

    def start(self) -> None:
        self._start = time.monotonic()

    def minutes(self) -> float | None:
        """Wall minutes since training started (None before)."""
        return None if self._start is None else (time.monotonic() - self._start) / 60.0

    def time_progress(self) -> float:
        """Share of the time budget spent (0 before training starts or without a budget)."""
        if self._start is None or self.budget_min is None:
            return 0.0
        return (time.monotonic() - self._start) / (60.0 * self.budget_min)

    def progress(self, step: int) -> float:
        if self.budget_min is not None:
            return self.time_progress()
        return step / self.total_steps if self.total_steps else 0.0

    def expired(self) -> bool:
        return self.budget_min is not None and self.time_progress() >= 1.0
