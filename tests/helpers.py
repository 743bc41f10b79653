"""Test-only Lightning callbacks, loaded by the CLI through class paths in subprocess runs."""

from __future__ import annotations

import math
import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class SignalAtStep(Callback):
    """Send `sig` (9 = SIGKILL, 15 = SIGTERM) to this process when global_step reaches `step`."""

    def __init__(self, step: int, sig: int = 9) -> None:
        self.step, self.sig = step, sig

    def on_train_batch_end(self, trainer, pl_module, *args, **kwargs) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.Signals(self.sig))


class PoisonAtStep(Callback):
    """Fill the head's weights with NaN when global_step reaches `step` (a diverging run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args, **kwargs) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.head.weight.fill_(math.nan)


class SaveWeights(Callback):
    """Save the final model weights to `path` when training ends (for bitwise comparisons)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            torch.save({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}, self.path)


class SignalAtEvalBatch(Callback):
    """Send `sig` to this process after the first batch of validate / test / predict (an evaluation preempted)."""

    def __init__(self, sig: int = 15) -> None:
        self.sig = sig

    def _kill(self, *args, **kwargs) -> None:
        os.kill(os.getpid(), signal.Signals(self.sig))

    on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _kill
