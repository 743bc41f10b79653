"""Pictures of a run: training curves from its CSV log (loss, accuracy, learning rate), and the confusion matrix and
per-class accuracy of an evaluation."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from vit_app.errors import ConfigError


def find_metrics(run_dir: str | os.PathLike) -> Path:
    """The run's CSV log: RUN_DIR/metrics.csv, or the newest one below RUN_DIR (e.g. runs/quickstart/)."""
    files = sorted(Path(run_dir).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise ConfigError(f"{run_dir}: no metrics.csv here (give a run folder such as runs/quickstart/version_0)")
    return files[-1]


def _series(rows: list[dict[str, str]], key: str, x_key: str = "step") -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        try:  # an empty cell is a metric not logged at that step; a garbled one (a line cut by a kill) is skipped
            x, v = float(r.get(x_key) or "nan"), float(r.get(key) or "nan")
        except (TypeError, ValueError):
            continue
        if x == x and v == v:
            xs.append(x)
            ys.append(v)
    return xs, ys


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write a PNG with train/val loss, val accuracy (top-1, top-5) and the learning rate against steps, from
    `run_dir`: a run folder (see find_metrics) or its metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = Path(run_dir) if Path(run_dir).is_file() else find_metrics(run_dir)  # a folder, or its log itself
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    run = metrics.parent
    out_path = Path(out) if out else run / "curves.png"  # beside the log it was drawn from
    lr_keys = [k for k in (rows[0].keys() if rows else []) if k and k.startswith("lr")]
    plotted = ("train/loss_step", "val/loss", "val/acc1", "val/acc5", "train/acc1_epoch", *lr_keys)
    if not any(_series(rows, k)[0] for k in plotted):
        raise ConfigError(f"{run}: its metrics.csv holds nothing to plot yet (no loss, accuracy or learning rate "
                          "logged: the run may not have reached its first logged step)")  # fmt: skip
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


def per_class_rows(cm: Tensor, class_names: list[str]) -> list[dict[str, object]]:
    """One row per class of a (C, C) confusion matrix (rows: true class, columns: predicted): support, correct,
    accuracy (recall), precision, and the class it is most often mistaken for."""
    cm = cm.long()
    support, predicted, correct = cm.sum(1), cm.sum(0), cm.diag()
    off = cm.clone()
    off.fill_diagonal_(-1)
    rows = []
    for c, name in enumerate(class_names):
        n = int(support[c])
        worst = int(off[c].argmax())
        rows.append(
            {
                "class": name,
                "index": c,
                "support": n,
                "correct": int(correct[c]),
                "accuracy": round(int(correct[c]) / n, 6) if n else float("nan"),
                "precision": round(int(correct[c]) / int(predicted[c]), 6) if int(predicted[c]) else float("nan"),
                "most_confused_with": class_names[worst] if int(off[c, worst]) > 0 else "",
            }
        )
    return rows


def write_per_class_csv(rows: list[dict[str, object]], path: str | os.PathLike) -> Path:
    out = Path(path)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def _percent(share: float, width: int) -> str:
    """A share as a percentage in `width` + 1 characters; "-" where it is undefined (no samples, nothing predicted)."""
    return f"{100 * share:{width}.1f}%" if share == share else f"{'-':>{width}s} "


def format_per_class(rows: list[dict[str, object]]) -> str:
    """The per-class table for a terminal."""
    width = max(len("class"), *(len(str(r["class"])) for r in rows))
    lines = [f"{'class':{width}s}  support  accuracy  precision  most confused with"]
    for r in rows:
        acc, prec = (_percent(float(r[k]), w) for k, w in (("accuracy", 7), ("precision", 8)))  # type: ignore[arg-type]
        name, confused = str(r["class"]), r["most_confused_with"]
        lines.append(f"{name:{width}s}  {r['support']:7d}  {acc}  {prec}  {confused}")
    return "\n".join(lines)


def plot_confusion(cm: Tensor, class_names: list[str], path: str | os.PathLike, title: str = "") -> Path:
    """A row-normalised confusion matrix (true class down, predicted across); counts in the cells up to 30 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = cm.long().cpu()
    C = cm.shape[0]
    frac = cm.float() / cm.sum(1, keepdim=True).clamp(min=1)  # (C, C), rows sum to 1 where a class has samples
    side = min(4 + 0.45 * C, 30)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(frac.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if C <= 50:
        ax.set_xticks(range(C), class_names, rotation=90 if C > 10 else 45, ha="right" if C <= 10 else "center")
        ax.set_yticks(range(C), class_names)
    if C <= 30:
        for i in range(C):
            for j in range(C):
                if int(cm[i, j]):
                    color = "white" if float(frac[i, j]) > 0.5 else "black"
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8, color=color)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = float(cm.diag().sum()) / max(1, int(cm.sum()))
    ax.set_title(f"{title} top-1 {100 * acc:.2f}% ({int(cm.sum())} images)".strip())
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def confusion_matrix(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    idx = target.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)
