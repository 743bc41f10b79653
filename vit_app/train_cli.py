"""`vit-app fit|validate|test|predict`: LightningCLI over our LightningModule and DataModule.

With --ckpt_path, validate / test / predict build the model from the checkpoint's card: no architecture flags are
needed, and a config whose model section disagrees with the card is refused with the difference named.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vit_app.callbacks import BadImageReport, Checkpoint, EvalReport, PredictionWriter, SafeCheckpointIO
from vit_app.card import ModelCard, read_card_file
from vit_app.data.datamodule import ViTDataModule
from vit_app.errors import CheckpointError, ConfigError
from vit_app.model import preset_config
from vit_app.module import ARCH_ARGS, ViTClassifier
from vit_app.precision import choose_precision

EVAL_COMMANDS = ("validate", "test", "predict")


class ViTCLI(LightningCLI):
    """LightningCLI with our links (data -> model), a best/last checkpoint callback, the precision rule, and
    models for evaluation built from the checkpoint's card."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "predict_writer")
        parser.add_lightning_class_args(EvalReport, "eval_report")
        parser.add_lightning_class_args(BadImageReport, "bad_images")
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

    def _parse_ckpt_path(self) -> None:
        """Lightning would replace the model section with the checkpoint's saved hyper-parameters (read with its own
        torch.load). Here the card decides instead: for evaluation the model is built from it, for fit the config
        must agree with it; both read the file through vit_app.checkpoint.safe_load (see _model_from_card)."""

    def before_instantiate_classes(self) -> None:
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit" and cfg.get("ckpt_path") == "last":
            self._resolve_last(cfg)
        if cfg.get("ckpt_path"):
            cfg["model"]["pretrained"] = None  # the checkpoint's weights replace them anyway: no download
        if self.subcommand in EVAL_COMMANDS and cfg.get("ckpt_path"):
            self._model_from_card(cfg, read_card_file(cfg["ckpt_path"]), str(cfg["ckpt_path"]))

    def _model_from_card(self, cfg: Any, card: ModelCard, path: str) -> None:
        """Set the model and data sections from the card: architecture, EMA, classes and input spec. Keys the user
        set (config or flags) must agree with it."""
        model, defaults = cfg["model"], self._parser(self.subcommand).get_defaults()["model"]
        if any(model.get(k) != defaults.get(k) for k in ("arch", *ARCH_ARGS)):  # the user described a model
            try:
                built = preset_config(model["arch"], **{k: model.get(k) for k in ARCH_ARGS},
                                      num_classes=card.num_classes, img_size=card.model.img_size)  # fmt: skip
            except ValueError as e:
                raise ConfigError(f"model.{e}") from None
            diff = card.model.differences(built)
            if diff:
                raise CheckpointError(
                    f"{path} holds a different model than the config describes (checkpoint vs config: "
                    f"{'; '.join(diff)}); leave the model section out (it is read from the checkpoint) or use the "
                    "config it was trained with"
                )
        arch = card.model.architecture()
        for k in ARCH_ARGS:
            model[k] = arch[k]
        ema = card.weights.startswith("model_ema.")
        model["ema_decay"] = (model.get("ema_decay") or 0.9999) if ema else None  # the weights it holds: EMA or not
        data = cfg["data"]
        for key, value in (("img_size", card.input.img_size), ("crop_pct", card.input.crop_pct),
                           ("mean", list(card.input.mean)), ("std", list(card.input.std))):  # fmt: skip
            given = list(data[key]) if isinstance(data.get(key), (list, tuple)) else data.get(key)
            if given is None:
                data[key] = value
            elif given != value and key != "img_size":  # another img_size is refused with the model's difference
                rank_zero_warn(f"vit-app: data.{key} {given} differs from the checkpoint's {value}: used as given")
        if data.get("class_names") is None:
            data["class_names"] = list(card.class_names)

    def _resolve_last(self, cfg: Any) -> None:
        """--ckpt_path last: the newest last.ckpt of this run name, continuing in its own version folder."""
        logger = cfg["trainer"].get("logger")
        init = logger.get("init_args", {}) if hasattr(logger, "get") else {}
        save_dir, name = init.get("save_dir") or "runs", init.get("name") or "lightning_logs"
        found = sorted(Path(save_dir, name).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"--ckpt_path last: no last.ckpt under {Path(save_dir, name)}/version_*/checkpoints/")
        cfg["ckpt_path"] = str(found[-1])
        version = found[-1].parent.parent.name.removeprefix("version_")
        if hasattr(logger, "get") and version.isdigit():
            logger["init_args"]["version"] = int(version)
        rank_zero_info(f"vit-app: resuming from {found[-1]}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("precision") is None:
            precision, reason = choose_precision(trainer_cfg.get("accelerator"))
            kwargs["precision"] = precision
            rank_zero_info(f"vit-app: precision {precision} (auto: {reason}; set trainer.precision to choose)")
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


def build_cli(args: list[str], run: bool = True) -> ViTCLI:
    """The LightningCLI over our module and data module (run=False: parse and instantiate only, for tests)."""
    _quiet_lightning()
    return ViTCLI(
        ViTClassifier,
        ViTDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "callbacks": [LearningRateMonitor(logging_interval="step")],
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
        },
        parser_kwargs={"exit_on_error": False},  # main() prints a short message instead of the full usage
        args=args,
        run=run,
    )


def run(args: list[str]) -> int:
    """Run a LightningCLI command; returns the exit status (143 after SIGTERM, once last.ckpt is saved)."""
    try:
        build_cli(args)
    except SIGTERMException:
        print("vit-app: stopped by SIGTERM; last.ckpt was saved (resume with --ckpt_path last)", file=sys.stderr)
        return 143
    except ArgumentError as e:  # jsonargparse: unknown key, wrong type, unreadable config file
        msg = str(e).strip().replace("\n", " ").replace("  ", " ")
        raise ConfigError(f"{msg} (see 'vit-app {args[0]} --help' for the options)") from e
    return 0
