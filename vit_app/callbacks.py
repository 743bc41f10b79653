"""Lightning callbacks of our own."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint that honours fast_dev_run at the end of training too (Lightning 2.6 writes last.ckpt there)."""

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)
