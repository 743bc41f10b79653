"""The `vit-app` entry point: LightningCLI subcommands (fit/validate/test/predict) plus the tools."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from vit_app import __version__
from vit_app.callbacks import Checkpoint
from vit_app.checkpoint import SafeCheckpointIO
from vit_app.data.datamodule import ViTDataModule
from vit_app.errors import UserError
from vit_app.module import ViTClassifier
from vit_app.precision import choose_precision

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
log = logging.getLogger("vit_app")

TOP_HELP = f"""vit-app {__version__}: train Vision Transformers, classify images, and see why they decided.

usage: vit-app COMMAND [options]      (vit-app COMMAND --help for a command's options)

Training and evaluation (LightningCLI, driven by YAML configs):
  fit          train:            vit-app fit --config configs/quickstart.yaml
  validate     evaluate on the validation split: vit-app validate --config C.yaml --ckpt_path best.ckpt
  test         evaluate on the test split:       vit-app test --config C.yaml --ckpt_path best.ckpt
  predict      predict over a dataset:           vit-app predict --config C.yaml --ckpt_path best.ckpt

  Config files stack (--config a.yaml --config b.yaml), any key can be overridden
  (--model.lr 3e-4 --data.batch_size 64), and --print_config shows the merged result.

Global options:
  --debug      show full tracebacks for errors in your input (by default: a short message)
  --version    print the version
"""


class ViTCLI(LightningCLI):
    """LightningCLI with our links (data -> model), a best/last checkpoint callback and automatic precision."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        # Written once, in the data section; the model reads them from the instantiated DataModule.
        for key in ("num_classes", "class_names", "img_size", "mean", "std", "crop_pct"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")

    def _auto_precision(self) -> str:
        """Pick the precision once the model exists: on a single CPU process it is probed on a real-size batch."""
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        single = str(trainer_cfg.get("devices", "auto")) in ("auto", "1") and "WORLD_SIZE" not in os.environ
        example = None
        if single and isinstance(self.datamodule, ViTDataModule):
            s = self.datamodule.img_size
            example = torch.randn(min(self.datamodule.batch_size, 64), 3, s, s)
        precision, reason = choose_precision(trainer_cfg.get("accelerator"), self.model.model, example)
        rank_zero_info(f"vit-app: precision {precision} (auto: {reason}; set trainer.precision to choose)")
        return precision

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("precision") is None:
            kwargs["precision"] = self._auto_precision()
        else:
            rank_zero_info(f"vit-app: precision {trainer_cfg['precision']} (from the config)")
        plugins = trainer_cfg.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, SafeCheckpointIO()]  # atomic saves, weights_only loads
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        cb = self.trainer.checkpoint_callback
        if isinstance(cb, ModelCheckpoint) and self.trainer.is_global_zero:
            for kind, path in (("best", cb.best_model_path), ("last", cb.last_model_path)):
                if path and os.path.isfile(path):
                    print(f"vit-app: {kind} checkpoint: {path}")


class _DropNoise(logging.Filter):
    """Drop Lightning's advertising tip from the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning() -> None:
    for handler in logging.getLogger("lightning.pytorch").handlers:
        handler.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


def run_lightning(args: list[str]) -> None:
    _quiet_lightning()
    ViTCLI(
        ViTClassifier,
        ViTDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "callbacks": [LearningRateMonitor(logging_interval="step")],
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
        },
        args=args,
    )


def _tools() -> dict[str, Callable[[list[str]], int]]:
    return {}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `vit-app` and `python -m vit_app`; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help", "help"):
        print(TOP_HELP)
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    tools = _tools()
    try:
        if args[0] in LIGHTNING_COMMANDS:
            run_lightning(args)
            return 0
        if args[0] in tools:
            return tools[args[0]](args[1:])
    except UserError as e:
        if debug:
            raise
        print(f"vit-app: error: {e}", file=sys.stderr)
        return 2
    print(f"vit-app: unknown command {args[0]!r}; run 'vit-app --help' for the list", file=sys.stderr)
    return 2
