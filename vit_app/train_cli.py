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

os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")  # LightningCLI's own use of jsonargparse, not ours

import torch  # noqa: E402
from jsonargparse import ArgumentError  # noqa: E402
from lightning.fabric.utilities.exceptions import MisconfigurationException  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.plugins.io import CheckpointIO  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402

from vit_app.callbacks import (  # noqa: E402
    BadImageReport,
    Checkpoint,
    EvalReport,
    ModelLine,
    PredictionWriter,
    SafeCheckpointIO,
    StderrProgressBar,
)
from vit_app.card import ModelCard, read_card_file  # noqa: E402
from vit_app.data.datamodule import ViTDataModule  # noqa: E402
from vit_app.errors import CheckpointError, ConfigError  # noqa: E402
from vit_app.model import preset_config  # noqa: E402
from vit_app.module import ARCH_ARGS, ViTClassifier  # noqa: E402
from vit_app.precision import choose_precision  # noqa: E402
from vit_app.progress import is_quiet, shows_bars  # noqa: E402

EVAL_COMMANDS = ("validate", "test", "predict")


def eval_dir(ckpt_path: str | os.PathLike) -> Path:
    """Where evaluating a checkpoint writes: runs/NAME/version_N/eval/<checkpoint name>/ for a checkpoint of a run
    (in its checkpoints/ folder), else <checkpoint folder>/eval/<checkpoint name>/."""
    p = Path(ckpt_path)
    run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return run / "eval" / p.stem


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
        for section in ("data", "model", "trainer"):
            if not hasattr(cfg.get(section), "get"):
                raise ConfigError(f"{section}: expected a section of settings (e.g. {section}:\n  key: value), "
                                  f"got {cfg.get(section)!r}")  # fmt: skip
        if self.subcommand == "fit" and cfg.get("ckpt_path") == "last":
            self._resolve_last(cfg)
        if self.subcommand == "fit" and cfg["trainer"].get("limit_val_batches") == 0:  # no validation (final fit):
            cfg["checkpoint"]["monitor"], cfg["checkpoint"]["save_top_k"] = None, 0  # no best.ckpt; last.ckpt stays
        if cfg.get("ckpt_path"):
            cfg["model"]["pretrained"] = None  # the checkpoint's weights replace them anyway: no download
        if self.subcommand in EVAL_COMMANDS:
            self._evaluation_setup(cfg)

    def _evaluation_setup(self, cfg: Any) -> None:
        """validate / test / predict: the model from the card; no run folder (version_N counts training runs);
        reports and predictions beside the checkpoint unless a folder is given."""
        cfg["trainer"]["logger"] = False  # so Lightning writes its config.yaml to trainer.default_root_dir (below)
        # Lightning asks for the callbacks that wrote the checkpoint (e.g. a config's every-epoch saver) so their
        # states can be restored: evaluation restores no callback state, so the request is noise here.
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need to be provided.*")
        # Nor does any checkpoint callback save outside fit (ours, or a config's own, e.g. an every-epoch saver), so
        # Lightning's note that its folder differs from the one it saved to at training time is noise too.
        warnings.filterwarnings("ignore", message=".*dirpath has changed.*")
        ckpt = cfg.get("ckpt_path")
        if not ckpt:
            if not cfg["model"].get("pretrained"):  # the weights would be a fresh random init: chance accuracy
                raise ConfigError(
                    f"vit-app {self.subcommand}: give --ckpt_path (a checkpoint from fit, e.g. "
                    "runs/NAME/version_0/checkpoints/best.ckpt) or --model.pretrained (timm weights); without either "
                    "the model is untrained"
                )
        else:
            self._model_from_card(cfg, read_card_file(ckpt), str(ckpt))
            out = str(eval_dir(ckpt))
            for key in ("eval_report", "predict_writer"):
                if not cfg[key].get("output_dir"):
                    cfg[key]["output_dir"] = out
        # Lightning's copy of the config (what the figures were made with) goes beside them, named like them
        # (val_config.yaml beside val_metrics.json), not into the current folder as config.yaml.
        stage = {"validate": "val"}.get(self.subcommand, self.subcommand)
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"{stage}_config.yaml"}
        writer = {"predict": ("predict_writer", PredictionWriter.default_dir)}
        key, default = writer.get(stage, ("eval_report", EvalReport.default_dir))
        if not cfg[key].get("enabled", True):  # no report asked for: no record of how it was made either
            self.save_config_callback = None
        if not cfg["trainer"].get("default_root_dir"):
            cfg["trainer"]["default_root_dir"] = cfg[key].get("output_dir") or default

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
        extra: list[Any] = []
        if trainer_cfg.get("enable_progress_bar", True) is not False:
            if shows_bars():  # Lightning's bar, on stderr (stdout is for results)
                extra.append(StderrProgressBar())
            else:
                kwargs["enable_progress_bar"] = False  # a log file or a pipe: no bar
        if trainer_cfg.get("enable_model_summary", True) is not False:
            kwargs["enable_model_summary"] = False  # Lightning's table: a FLOPs column of zeros, a bf16 warning
            extra.append(ModelLine())
        if extra:
            given = trainer_cfg.get("callbacks") or []
            kwargs["callbacks"] = [*(given if isinstance(given, list) else [given]), *extra]
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
        t = self.trainer
        if not t.is_global_zero:
            return
        metrics = {k: float(v) for k, v in t.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
            epochs = self.model.card().provenance.epochs
            print(f"vit-app: final: {shown} after {t.global_step} steps ({epochs} epochs)")
        ours = [c for c in t.callbacks if isinstance(c, Checkpoint)]  # not a config's own (e.g. every epoch's)
        cb = ours[0] if ours else t.checkpoint_callback
        if isinstance(cb, ModelCheckpoint):
            if cb.best_model_score is not None and cb.monitor:
                print(f"vit-app: best: {cb.monitor} {float(cb.best_model_score):.4f} in {cb.best_model_path}")
            for kind, path in (("best", cb.best_model_path), ("last", cb.last_model_path)):
                if path and os.path.isfile(path):
                    print(f"vit-app: {kind} checkpoint: {path}")

    def _report(self) -> None:
        for cb in self.trainer.callbacks:  # what they wrote, once the bars are gone
            for line in getattr(cb, "summary", ()):
                print(line)
            if hasattr(cb, "summary"):
                cb.summary = []

    def after_validate(self) -> None:
        self._report()

    def after_test(self) -> None:
        self._report()

    def after_predict(self) -> None:
        self._report()


class _DropNoise(logging.Filter):
    """Drop Lightning's advertising tip from the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


class _DropHardwareLines(logging.Filter):
    """'GPU available: False, used: False', 'Using bfloat16 Automatic Mixed Precision' and the like: our precision
    line says what matters."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (" available: " in msg or msg.startswith(("LOCAL_RANK", "You are using a CUDA device", "Using ")))


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING if is_quiet() else logging.INFO)
        for handler in logger.handlers:
            handler.addFilter(_DropNoise())
            handler.addFilter(_DropHardwareLines())
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    # A small training set: fewer batches than log_every_n_steps. Each epoch's training metrics are logged anyway
    # (on_epoch=True), so `vit-app plot` has its curves; the advice to change the interval is noise.
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")


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


def check_config_files(args: list[str]) -> None:
    """Read each --config file before LightningCLI does, to refuse in one line what its parser accepts silently or
    reports obscurely: an empty file, a key set twice in one mapping (YAML's last one would win unseen), and tab
    indentation."""
    import yaml

    class _Strict(yaml.SafeLoader):
        label = "--config"  # the file, for messages (set per file below)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, (str, int, float, bool)):  # None, or a key YAML itself will refuse
                    continue
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(f"{self.label}: key {key!r} is set twice in one section (lines {seen[key]} and "
                                      f"{line}); YAML would keep the last one without a word: keep one")  # fmt: skip
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    files = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    files += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for name in files:
        try:
            text = Path(name).read_text()
        except (OSError, UnicodeDecodeError):
            continue  # a missing or unreadable file: the parser's own message names it
        try:
            doc = yaml.load(text, Loader=type("_Named", (_Strict,), {"label": f"--config {name}"}))
        except yaml.YAMLError as e:
            tab = " (a tab in the indentation: YAML indents with spaces only)" if "\t" in text else ""
            where = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
            raise ConfigError(
                f"--config {name}: not valid YAML{where}{tab}: {getattr(e, 'problem', None) or e}"
            ) from None
        if doc is None:
            raise ConfigError(f"--config {name}: the file holds no settings (empty, or comments only)")


def run(args: list[str], quiet: bool = False) -> int:
    """Run a LightningCLI command; returns the exit status (143 after SIGTERM, once last.ckpt is saved)."""
    check_config_files(args)
    if quiet:
        args = [*args, "--trainer.enable_progress_bar", "false"]
    try:
        cli = build_cli(args)
    except SIGTERMException:
        saved = "; last.ckpt was saved (resume with --ckpt_path last)" if args and args[0] == "fit" else ""
        print(f"vit-app: stopped by SIGTERM{saved}", file=sys.stderr)
        return 143
    except ArgumentError as e:  # jsonargparse: unknown key, wrong type, unreadable config file
        msg = " ".join(str(e).split())
        files = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
        if files and "config" in msg.lower() and not any(f in msg for f in files):
            msg = f"--config {' '.join(files)}: {msg}"  # say which file the parser could not read
        raise ConfigError(f"{msg} (see 'vit-app {args[0]} --help' for the options)") from e
    except MisconfigurationException as e:  # Lightning's own checks of trainer settings
        raise ConfigError(f"trainer: {' '.join(str(e).split())}") from e
    writers = [c for c in getattr(cli.trainer, "callbacks", []) if isinstance(c, PredictionWriter)]
    return 1 if any(w.failed for w in writers) else 0  # as classify: some images could not be read
