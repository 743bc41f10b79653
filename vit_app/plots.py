"""Pictures of a run: training curves from its CSV log (loss, accuracy, learning rate)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from vit_app.errors import ConfigError


def _read_metrics(run_dir: Path) -> list[dict[str, str]]:
    files = sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise ConfigError(f"{run_dir}: no metrics.csv here (give a run folder such as runs/quickstart/version_0)")
    with open(files[-1], newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict[str, str]], key: str, x_key: str = "step") -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v, x = r.get(key, ""), r.get(x_key, "")
        if v not in ("", None) and x not in ("", None):
            xs.append(float(x))
            ys.append(float(v))
    return xs, ys


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write a PNG with train/val loss, val accuracy (top-1, top-5) and the learning rate against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    rows = _read_metrics(run)
    out_path = Path(out) if out else run / "curves.png"
    lr_keys = [k for k in (rows[0].keys() if rows else []) if k.startswith("lr")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (("train/loss_step", "train loss"), ("val/loss", "val loss"), ("train/loss_epoch", None)):
        xs, ys = _series(rows, key)
        if xs and label:
            axes[0].plot(
                xs, ys, label=label, alpha=0.8 if key != "val/loss" else 1.0, marker="o" if "val" in key else None
            )
    axes[0].set_title("loss")
    for key, label in (("val/acc1", "val top-1"), ("val/acc5", "val top-5"), ("train/acc1_epoch", "train top-1")):
        xs, ys = _series(rows, key)
        if xs:
            axes[1].plot(xs, [100 * y for y in ys], marker="o", label=label)
            if key == "val/acc1":
                best = max(range(len(ys)), key=ys.__getitem__)
                axes[1].annotate(f"{100 * ys[best]:.1f}%", (xs[best], 100 * ys[best]), textcoords="offset points",
                                 xytext=(0, 6), ha="center")  # fmt: skip
    axes[1].set_title("accuracy (%)")
    for key in lr_keys:
        xs, ys = _series(rows, key)
        if xs:
            axes[2].plot(xs, ys, label=key)
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    epochs = _series(rows, "epoch")[1]
    n_epochs = int(max(epochs)) + 1 if epochs and not math.isnan(max(epochs)) else 0
    fig.suptitle(f"{run} ({n_epochs} epochs)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
