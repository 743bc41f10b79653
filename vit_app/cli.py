"""The `vit-app` entry point: LightningCLI subcommands (fit/validate/test/predict) plus the tools."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vit_app import __version__
from vit_app.callbacks import BadImageReport, Checkpoint, EvalReport, PredictionWriter
from vit_app.checkpoint import SafeCheckpointIO
from vit_app.data.datamodule import ViTDataModule
from vit_app.errors import ConfigError, UserError
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

Images (any checkpoint from fit; no config needed):
  classify       top-k predictions:  vit-app classify img.jpg photos/ "*.png" --ckpt best.ckpt --format json
  attention      attention maps:     vit-app attention img.jpg --ckpt best.ckpt --out maps/ --method rollout
  explain-eval   how right the maps are: vit-app explain-eval --ckpt best.ckpt
  export         deploy:             vit-app export --ckpt best.ckpt --format onnx --out model.onnx
  plot           training curves:    vit-app plot runs/quickstart/version_0
  calibrate      temperature scaling: vit-app calibrate --ckpt best.ckpt --data cifar10:~/data/cifar10

Global options:
  --debug      show full tracebacks for errors in your input (by default: a short message)
  --version    print the version
"""


class ViTCLI(LightningCLI):
    """LightningCLI with our links (data -> model), a best/last checkpoint callback and automatic precision."""

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

    def before_instantiate_classes(self) -> None:
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision("high")
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit" and cfg.get("ckpt_path") == "last":
            self._resolve_last(cfg)
        if cfg.get("ckpt_path") and cfg["model"].get("pretrained"):
            cfg["model"]["pretrained"] = None  # the checkpoint's weights replace them anyway: no download

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

    def _auto_precision(self) -> str:
        """Pick the precision once the model exists: on a single CPU process it is probed on a real-size batch."""
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        single = str(trainer_cfg.get("devices", "auto")) in ("auto", "1") and "WORLD_SIZE" not in os.environ
        example = None
        if single and isinstance(self.datamodule, ViTDataModule):
            s = self.datamodule.img_size
            example = torch.randn(self.datamodule.batch_size, 3, s, s)  # the probe takes what fits its time budget
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


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"vit-app {prog}", description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint written by 'vit-app fit' (best.ckpt or last.ckpt)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu or cuda")


def _load(args: argparse.Namespace):
    from vit_app.classify import resolve_device
    from vit_app.inference import load_for_inference

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return load_for_inference(args.ckpt, device)


def cmd_classify(argv: list[str]) -> int:
    p = _parser("classify", "Top-k predictions for image files, folders (searched recursively) and glob patterns.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    _add_model_args(p)
    p.add_argument("--topk", type=int, default=5, help="how many classes to report per image")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    p.add_argument("--output", help="write the results to this file instead of standard output")
    args = p.parse_args(argv)
    from vit_app.classify import classify

    im = _load(args)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        done, failed = classify(im, args.paths, out, args.format, args.topk, args.batch_size)
    finally:
        if args.output:
            out.close()
    print(f"vit-app classify: {done} classified, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_attention(argv: list[str]) -> int:
    p = _parser(
        "attention",
        "Attention maps: per image an overlay PNG (prediction and probability in the picture) and the raw map "
        "(.npy, grid_h x grid_w), plus index.jsonl listing them.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--method",
        choices=["rollout", "grad-rollout", "attention"],
        default="rollout",
        help="rollout: attention rollout; grad-rollout: class-specific, gradient-weighted rollout; "
        "attention: one layer's raw maps",
    )
    p.add_argument("--head-fusion", choices=["mean", "max", "min"], default="mean", help="how heads are combined")
    p.add_argument("--discard-ratio", type=float, default=0.0, help="drop this share of the lowest attentions")
    p.add_argument("--layer", type=int, default=-1, help="layer for --method attention and --heads-grid")
    p.add_argument("--class", dest="target", help="class (name or index) for grad-rollout; default: the predicted")
    p.add_argument("--layers-grid", action="store_true", help="also write a PNG of the rollout after each layer")
    p.add_argument("--heads-grid", action="store_true", help="also write a PNG of each head's map in --layer")
    p.add_argument("--html", action="store_true", help="also write report.html: inputs, overlays, top-k, side by side")
    args = p.parse_args(argv)
    from vit_app.explain.render import run_attention

    im = _load(args)
    try:
        done, failed = run_attention(
            im, args.paths, args.out, args.method, args.head_fusion, args.discard_ratio, args.layer, args.target,
            args.layers_grid, args.heads_grid, args.batch_size, html=args.html,
        )  # fmt: skip
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"vit-app attention: {done} explained into {args.out}, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_explain_eval(argv: list[str]) -> int:
    p = _parser(
        "explain-eval",
        "Score attention maps against a random baseline: pointing game and map mass inside the object mask on the "
        "synthetic dataset, deletion and insertion curves on any images. Prints a table, writes a PNG and JSON.",
    )
    _add_model_args(p)
    p.add_argument(
        "--data",
        nargs="+",
        default=["synthetic"],
        help="'synthetic' (with masks), 'cifar10:ROOT' / 'cifar100:ROOT' (test split), or image files/folders/globs",
    )
    p.add_argument("--num-images", type=int, default=256, help="how many images to score")
    p.add_argument("--methods", nargs="+", default=["rollout", "grad-rollout", "attention"], help="methods to score")
    p.add_argument("--steps", type=int, default=16, help="points on each deletion/insertion curve")
    p.add_argument("--discard-ratio", type=float, default=0.0, help="rollout discard ratio")
    p.add_argument("--layer", type=int, default=-1, help="the layer whose raw maps --methods attention scores")
    p.add_argument("--out", default="explain_eval", help="folder for explain_eval.png and explain_eval.json")
    args = p.parse_args(argv)
    from vit_app.explain.evaluate import run_explain_eval

    im = _load(args)
    try:
        table = run_explain_eval(
            im,
            args.data,
            args.num_images,
            args.methods,
            args.steps,
            args.discard_ratio,
            args.out,
            args.batch_size,
            args.layer,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(table)
    print(f"vit-app explain-eval: wrote {args.out}/explain_eval.png and {args.out}/explain_eval.json", file=sys.stderr)
    return 0


def cmd_export(argv: list[str]) -> int:
    p = _parser("export", "Export a checkpoint for deployment (ONNX and TorchScript take any batch size).")
    p.add_argument("--ckpt", required=True, help="checkpoint written by 'vit-app fit'")
    p.add_argument("--format", choices=["onnx", "torchscript", "safetensors"], required=True, help="output format")
    p.add_argument("--out", required=True, help="output file (the metadata goes beside it as OUT.json)")
    args = p.parse_args(argv)
    from vit_app.export import export_model
    from vit_app.inference import load_for_inference

    path = export_model(load_for_inference(args.ckpt), args.format, args.out)
    print(f"vit-app export: wrote {path}", file=sys.stderr)
    return 0


def cmd_plot(argv: list[str]) -> int:
    p = _parser("plot", "Plot a run's training curves (loss, accuracy, learning rate) from its CSV log to a PNG.")
    p.add_argument("run_dir", help="a run folder, e.g. runs/quickstart/version_0")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    args = p.parse_args(argv)
    from vit_app.plots import plot_run

    print(f"vit-app plot: wrote {plot_run(args.run_dir, args.out)}", file=sys.stderr)
    return 0


def cmd_calibrate(argv: list[str]) -> int:
    p = _parser(
        "calibrate",
        "Fit a temperature on a validation split so predicted probabilities match accuracy; store it in the "
        "checkpoint (classify and attention then use it); print ECE before and after; draw a reliability diagram.",
    )
    _add_model_args(p)
    p.add_argument("--data", default="synthetic", help="synthetic, cifar10:ROOT, cifar100:ROOT or folder:VAL_DIR")
    p.add_argument("--num-images", type=int, default=10000, help="at most this many validation images")
    p.add_argument("--out", help="write the calibrated checkpoint here instead of updating --ckpt in place")
    p.add_argument("--plot", default="reliability.png", help="reliability diagram PNG")
    args = p.parse_args(argv)
    from vit_app import calibrate as cal

    im = _load(args)
    im.metadata["temperature"] = 1.0
    logits, labels = cal.collect_logits(im, cal.validation_batches(args.data, im, args.batch_size, args.num_images))
    t = cal.fit_temperature(logits, labels)
    before, after = logits.softmax(-1), (logits / t).softmax(-1)
    ece0, ece1 = cal.expected_calibration_error(before, labels), cal.expected_calibration_error(after, labels)
    cal.reliability_diagram(before, after, labels, args.plot, t)
    path = cal.store_temperature(args.ckpt, t, args.out)
    acc = float((logits.argmax(1) == labels).float().mean())
    print(f"images: {len(labels)}  accuracy: {acc:.4f}  temperature: {t:.4f}")
    print(f"ECE before: {ece0:.4f}  after: {ece1:.4f}")
    print(f"vit-app calibrate: stored T={t:.4f} in {path}; diagram: {args.plot}", file=sys.stderr)
    return 0


def _tools() -> dict[str, Callable[[list[str]], int]]:
    return {
        "calibrate": cmd_calibrate,
        "classify": cmd_classify,
        "attention": cmd_attention,
        "explain-eval": cmd_explain_eval,
        "export": cmd_export,
        "plot": cmd_plot,
    }


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
            build_cli(args)
            return 0
        if args[0] in tools:
            return tools[args[0]](args[1:])
    except UserError as e:
        if debug:
            raise
        print(f"vit-app: error: {e}", file=sys.stderr)
        return 2
    except SIGTERMException:
        print(
            "vit-app: stopped by SIGTERM; the last checkpoint was saved (resume with --ckpt_path last)", file=sys.stderr
        )
        return 143
    except FloatingPointError as e:  # a diverged run: the message says where and what to try
        if debug:
            raise
        print(f"vit-app: error: {e}", file=sys.stderr)
        return 3
    except ArgumentError as e:  # jsonargparse: unknown key, wrong type, unreadable config file
        if debug:
            raise
        msg = str(e).strip().replace("\n", " ").replace("  ", " ")
        print(f"vit-app: config error: {msg}\n(see 'vit-app {args[0]} --help' for the options)", file=sys.stderr)
        return 2
    print(f"vit-app: unknown command {args[0]!r}; run 'vit-app --help' for the list", file=sys.stderr)
    return 2
