"""Lightning callbacks and the checkpoint IO plugin of our own."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vit_app.checkpoint import atomic_write, safe_load
from vit_app.errors import BadDataError, ConfigError
from vit_app.plots import confusion_matrix, format_per_class, per_class_rows, plot_confusion, write_per_class_csv


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: atomic saves, weights_only loads (resume included)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return safe_load(path, map_location=map_location if map_location is not None else "cpu")


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint (best by the monitored metric, and last) that also saves last.ckpt every
    `last_every_n_steps` optimiser steps (mid-epoch resume points) and when the job is preempted (SIGTERM), and
    honours fast_dev_run at the end of training (Lightning 2.6 writes last.ckpt there).

    Args:
        last_every_n_steps: also refresh last.ckpt every this many steps (0: only when Lightning saves).
    """

    def __init__(self, *args: Any, last_every_n_steps: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_every_n_steps = last_every_n_steps

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._fitting = stage == "fit"
        super().setup(trainer, pl_module, stage)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if getattr(self, "_fitting", True):  # evaluating saves nothing: the saved state (and its folder) is moot
            super().load_state_dict(state_dict)

    def _save_last_now(self, trainer: Any) -> str:
        path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)  # type: ignore[arg-type]
        trainer.save_checkpoint(path, weights_only=self.save_weights_only)  # full state unless configured
        self.last_model_path = path
        return path

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        n = self.last_every_n_steps
        if n > 0 and trainer.global_step % n == 0 and not trainer.fast_dev_run and not trainer.sanity_checking:
            self._save_last_now(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.fast_dev_run:
            return
        super().on_train_end(trainer, pl_module)
        if self.save_last and self.dirpath and self._last_global_step_saved != trainer.global_step:
            self._save_last_now(trainer)  # a run stopped mid-epoch (time budget, max_steps): keep its final weights

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn != "fit":
            return  # validate / test / predict: nothing to resume, and the run's own last.ckpt must stay as it is
        if isinstance(exception, SIGTERMException) and not trainer.fast_dev_run and self.dirpath:
            path = self._save_last_now(trainer)  # at a batch boundary: resumable with --ckpt_path last
            rank_zero_info(f"vit-app: SIGTERM received: saved {path}")
            return
        super().on_exception(trainer, pl_module, exception)


def tta_line(tta: str, done: str) -> str:
    """The line that says a figure or a prediction averages test-time views, and how to get the plain one."""
    from vit_app.tta import TTA_VIEWS

    return (f"vit-app: {done} with test-time augmentation {tta} ({TTA_VIEWS[tta]} views an image); "
            "--model.eval_tta none gives the plain one")  # fmt: skip


class PredictionWriter(BasePredictionWriter):
    """Writes `vit-app predict` results as they come: JSON lines or CSV (top-k per image, errors in place) and, with
    maps=True, each image's rollout map as <output_dir>/maps/<index>.npy. With several processes each writes its own
    predictions.rank<N> file.

    Args:
        output_dir: folder for predictions.jsonl / predictions.csv and maps/ (default: beside the checkpoint, in
            runs/NAME/version_N/eval/<checkpoint name>/; ./predictions without one).
        format: "jsonl" (also spelt "json": one JSON object a line) or "csv".
        topk: classes reported per image (at most the model's class count).
        maps: also compute and save the attention rollout of every image.
    """

    default_dir = "predictions"  # without a checkpoint (--model.pretrained)

    def __init__(
        self,
        output_dir: str | None = None,
        format: Literal["jsonl", "json", "csv"] = "jsonl",
        topk: int = 5,
        maps: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        if topk < 1:
            raise ConfigError(f"predict_writer.topk must be 1 or more, got {topk}")
        self.output_dir = Path(output_dir or self.default_dir)
        self.format, self.topk, self.maps = "jsonl" if format == "json" else format, topk, maps
        self._file: IO[str] | None = None
        self._writer: Any = None
        self.summary: list[str] = []  # for the CLI to print once the progress bar is gone
        self.written, self.failed = 0, []  # images predicted; (path, reason) of those that could not be read

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        pl_module.predict_maps = self.maps
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.maps:
            (self.output_dir / "maps").mkdir(exist_ok=True)
        suffix = "" if trainer.world_size == 1 else f".rank{trainer.global_rank}"
        path = self.output_dir / f"predictions{suffix}.{self.format}"
        self._file = open(path, "w", newline="")
        from vit_app.classify import Writer

        self._writer = Writer(self._file, self.format, self.topk)  # type: ignore[arg-type]
        self._class_names = pl_module.class_names
        self.written, self.failed = 0, []

    def write_on_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dl_idx: int = 0,
    ) -> None:
        from vit_app.inference import topk_records

        records = topk_records(prediction["probs"].cpu(), self._class_names, self.topk)
        for i, (path, error) in enumerate(zip(prediction["path"], prediction["error"])):
            if error:
                self._writer.error(path, error)
                self.failed.append((path, error))
                continue
            self._writer.result(path, records[i])
            self.written += 1
            if self.maps:
                index = int(prediction["index"][i])
                np.save(self.output_dir / "maps" / f"{index:07d}.npy", prediction["maps"][i].float().cpu().numpy())

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            first = "; ".join(f"{p}: {r}" for p, r in self.failed[:3]) + (" ..." if len(self.failed) > 3 else "")
            failed = f" ({first}; each has an error line in place)" if self.failed else ""
            self.summary.append(f"vit-app predict: {self.written} predicted, {len(self.failed)} failed{failed}; "
                                f"written to {self.output_dir}")  # fmt: skip
            tta = getattr(pl_module, "active_tta", "none")
            if tta != "none":
                self.summary.append(tta_line(tta, "predicted"))


class EvalReport(Callback):
    """After `vit-app validate` or `vit-app test`: a confusion-matrix PNG, a per-class accuracy table and the metrics.

    Writes <output_dir>/<stage>_confusion.png, <stage>_per_class.csv and <stage>_metrics.json, and keeps the table in
    `summary` for the CLI to print. The counts are summed over processes, so a multi-device evaluation reports the
    whole split. Validation inside `fit` is left alone.

    Args:
        enabled: write the report (set false to skip it).
        output_dir: where to write; default beside the checkpoint, in runs/NAME/version_N/eval/<checkpoint name>/
            (./eval_report without a checkpoint).
    """

    default_dir = "eval_report"  # without a checkpoint (--model.pretrained)

    def __init__(self, enabled: bool = True, output_dir: str | None = None) -> None:
        self.enabled, self.output_dir = enabled, output_dir
        self._cm: torch.Tensor | None = None
        self.summary: list[str] = []

    def _active(self, trainer: Any) -> bool:
        return self.enabled and trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING)

    def _start(self, trainer: Any, pl_module: Any) -> None:
        if self._active(trainer):
            n = pl_module.hparams.num_classes
            self._cm = torch.zeros(n, n, dtype=torch.long, device=pl_module.device)

    def _batch(self, outputs: Any) -> None:
        if self._cm is not None and isinstance(outputs, dict) and "pred" in outputs:
            self._cm += confusion_matrix(outputs["pred"], outputs["target"], self._cm.shape[0]).to(self._cm.device)

    def _end(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._cm is None:
            return
        cm = trainer.strategy.reduce(self._cm, reduce_op="sum") if trainer.world_size > 1 else self._cm
        self._cm = None
        if not trainer.is_global_zero:
            return
        out = Path(self.output_dir or self.default_dir)
        out.mkdir(parents=True, exist_ok=True)
        cm = cm.cpu()
        rows = per_class_rows(cm, pl_module.class_names)
        csv_path = write_per_class_csv(rows, out / f"{stage}_per_class.csv")
        png = plot_confusion(cm, pl_module.class_names, out / f"{stage}_confusion.png", title=f"{stage}:")
        found = trainer.callback_metrics.items()
        metrics: dict[str, Any] = {k: float(v) for k, v in found if k.startswith(f"{stage}/")}
        tta = getattr(pl_module, "active_tta", "none")
        metrics["eval_tta"] = tta  # which figure it is: plain, or averaged over test-time views
        (out / f"{stage}_metrics.json").write_text(json.dumps(metrics, indent=2))
        self.summary += ["", format_per_class(rows), f"vit-app: confusion matrix {png}, per-class table {csv_path}"]
        if tta != "none":
            self.summary.append(tta_line(tta, "scored"))

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(trainer, pl_module)

    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kw: Any) -> None:
        self._batch(outputs)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any, **kw: Any) -> None:
        self._batch(outputs)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._end(trainer, pl_module, "val")  # after the epoch's metrics are computed

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._end(trainer, pl_module, "test")


class StderrProgressBar(TQDMProgressBar):
    """Lightning's progress bar, drawn on stderr: stdout carries results (metric tables, predictions)."""


def _on_stderr(init: Any) -> Any:
    def make(self: TQDMProgressBar) -> Any:
        with redirect_stdout(sys.stderr):  # Lightning's bars are made with file=sys.stdout
            return init(self)

    return make


for _stage in ("sanity", "train", "validation", "test", "predict"):
    _name = f"init_{_stage}_tqdm"
    setattr(StderrProgressBar, _name, _on_stderr(getattr(TQDMProgressBar, _name)))


class ModelLine(Callback):
    """One line about the model when training starts, instead of Lightning's summary table."""

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        cfg = pl_module.model_config
        n = sum(p.numel() for p in pl_module.model.parameters())
        size = cfg.img_size if isinstance(cfg.img_size, int) else "x".join(map(str, cfg.img_size))
        rank_zero_info(
            f"vit-app: model: ViT {cfg.depth} blocks x {cfg.embed_dim} wide, {cfg.num_heads} heads, patch "
            f"{cfg.patch_size} on {size} px, {cfg.num_classes} classes: {n / 1e6:.2f} M parameters"
        )


class StepTimer(Callback):
    """Per training epoch: the median optimiser-step time, and a fixed reference (a 512 x 512 fp32 matmul, timed
    right after the epoch) that tracks the machine's own speed. A run that slows while the reference does not is
    slowing for a reason of its own (state that grows, denormals, the allocator). Logged as perf/step_ms,
    perf/reference_ms, perf/step_over_reference and perf/rss_mib, and kept in `epochs`.

    Args:
        reference_rounds: how many timed reference matmuls (the median is kept).
    """

    def __init__(self, reference_rounds: int = 20) -> None:
        self.reference_rounds = reference_rounds
        self.epochs: list[dict[str, float]] = []
        self._steps: list[float] = []
        self._t: float | None = None
        self._ref = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._t is not None:
            self._steps.append(time.perf_counter() - self._t)

    def reference_ms(self) -> float:
        times = []
        for _ in range(self.reference_rounds):
            t = time.perf_counter()
            (self._ref @ self._ref).sum().item()
            times.append(time.perf_counter() - t)
        return 1000 * sorted(times)[len(times) // 2]

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._steps:
            return
        steps = sorted(self._steps[1:] or self._steps)  # the first step of an epoch also waits for the loader
        self._steps = []
        row = {"epoch": float(trainer.current_epoch), "step_ms": 1000 * steps[len(steps) // 2],
               "reference_ms": self.reference_ms(), "rss_mib": _rss_mib()}  # fmt: skip
        row["step_over_reference"] = row["step_ms"] / row["reference_ms"]
        self.epochs.append(row)
        pl_module.log_dict({f"perf/{k}": v for k, v in row.items() if k != "epoch"}, on_epoch=True)


def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class BadImageReport(Callback):
    """Counts the images that could not be read (ImageFolder data): each is dropped from its batch, never replaced by
    another sample. At the end of every epoch a summary goes to stderr and `<stage>/bad_images` to the logger; past
    `limit` the run stops with a message naming the files.

    Args:
        limit: how many unreadable training images are tolerated: a share of the training set when below 1
            (0.01 = 1 %), else a count. 0 stops at the first one.
    """

    def __init__(self, limit: float = 0.01) -> None:
        if limit < 0:
            raise ConfigError(f"bad_images.limit: {limit} is negative; give a share (0.01) or a count (10)")
        self.limit = limit
        self._train_bad: dict[str, str] = {}  # every unreadable training file so far: path -> reason
        self._epoch: dict[str, dict[str, str]] = {"train": {}, "val": {}, "test": {}}

    def _allowed(self, trainer: Any) -> float:
        if self.limit >= 1:
            return self.limit
        dm = getattr(trainer, "datamodule", None)
        n = len(dm.train_set) if dm is not None and getattr(dm, "train_set", None) is not None else 0
        return self.limit * n

    def _batch(self, trainer: Any, batch: Any, stage: str) -> None:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 3):
            return
        self._epoch[stage].update(batch[2])
        if stage != "train":
            return
        self._train_bad.update(batch[2])
        n, allowed = len(self._train_bad), self._allowed(trainer)
        if n > allowed:
            first = "; ".join(f"{p}: {r}" for p, r in list(self._train_bad.items())[:3])
            raise BadDataError(
                f"{n} training images could not be read, more than bad_images.limit allows ({self.limit}, i.e. "
                f"{allowed:g} images). First: {first}. Fix or remove them, or raise --bad_images.limit."
            )

    def _summary(self, trainer: Any, stage: str) -> None:
        bad = self._epoch[stage]
        self._epoch[stage] = {}
        if not bad or trainer.sanity_checking:
            return
        shown = "\n".join(f"  {p}: {r}" for p, r in list(bad.items())[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        rank_zero_warn(
            f"vit-app: epoch {trainer.current_epoch}: {len(bad)} unreadable {stage} images skipped (not replaced):\n"
            f"{shown}{more}"
        )
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"{stage}/bad_images": float(len(bad))}, step=trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batch(trainer, batch, "train")

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *a: Any) -> None:
        self._batch(trainer, batch, "val")

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *a: Any) -> None:
        self._batch(trainer, batch, "test")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._summary(trainer, "train")

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._summary(trainer, "val")

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._summary(trainer, "test")
