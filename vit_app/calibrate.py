"""Trustworthy probabilities: fit a temperature on validation logits, report ECE, draw a reliability diagram."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vit_app.card import CARD_KEY, load_model_file, read_card, save_safetensors
from vit_app.checkpoint import atomic_write, safe_load
from vit_app.errors import ConfigError
from vit_app.inference import InferenceModel


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE: the bin-weighted gap between confidence and accuracy, over `bins` equal-width confidence bins."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.float().mean() * (conf[sel].mean() - correct[sel].mean()).abs()
    return float(ece)


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) (LBFGS on log T)."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def cross_fitted_probs(logits: Tensor, labels: Tensor, seed: int = 0) -> Tensor:
    """Calibrated probabilities (N, C) measured out of sample: the images split at random in two halves, each half
    scaled by the temperature fitted on the other. What the stored temperature (fitted on all) does to images it
    was not fitted on, without holding any out of the fit."""
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    halves = (perm[: n // 2], perm[n // 2 :])
    probs = torch.empty_like(logits)
    for mine, other in (halves, halves[::-1]):
        probs[mine] = (logits[mine] / fit_temperature(logits[other], labels[other])).softmax(-1)
    return probs


def collect_logits(im: InferenceModel, data: str, batch_size: int, limit: int) -> tuple[Tensor, Tensor]:
    """The model's raw logits (no temperature) and the labels over at most `limit` labelled images of `data` (see
    vit_app.evaldata), with a progress bar."""
    from vit_app.evaldata import batches, open_data, parse_data
    from vit_app.progress import bar

    n, samples = open_data(parse_data(data), im.class_names, im.card.input.img_size, limit, labels=True)
    logits, labels = [], []
    with bar(n, "calibrate") as progress:
        for x, y, _ in batches(samples, im.transform, batch_size):
            logits.append(im(x).cpu())
            labels.append(y)
            progress.update(len(x))
    if not logits:
        raise ConfigError(f"--data {data}: no readable labelled images")
    return torch.cat(logits), torch.cat(labels)


def reliability_diagram(before: Tensor, after: Tensor, labels: Tensor, path: str, t: float, bins: int = 15) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    panels = ((axes[0], before, "before (T = 1)"), (axes[1], after, f"after (T = {t:.3f}, cross-fitted)"))
    for ax, probs, title in panels:
        conf, pred = probs.max(dim=1)
        correct = (pred == labels).float()
        edges = torch.linspace(0, 1, bins + 1)
        accs, mids, counts = [], [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (conf > lo) & (conf <= hi)
            mids.append(float((lo + hi) / 2))
            accs.append(float(correct[sel].mean()) if sel.any() else 0.0)
            counts.append(int(sel.sum()))
        ax.bar(mids, accs, width=1 / bins, edgecolor="black", alpha=0.8, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
        ax.set_title(f"{title}: ECE {expected_calibration_error(probs, labels, bins):.4f}")
        ax.set_xlabel("confidence")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def store_temperature(model_file: str | os.PathLike, t: float, out: str | os.PathLike | None = None) -> Path:
    """Write the temperature into the model card of a checkpoint or .safetensors file (atomically; in place unless
    `out`). An old-layout checkpoint's card is rewritten in the current format."""
    src, target = Path(model_file), Path(out or model_file)
    if src.suffix == ".safetensors":
        card, state = load_model_file(src)
        save_safetensors(state, card.with_temperature(t), target)
        return target
    ckpt = safe_load(src)
    ckpt[CARD_KEY] = read_card(ckpt.get(CARD_KEY), src).with_temperature(t).to_dict()
    atomic_write(target, lambda f: torch.save(ckpt, f))
    return target


@dataclass(frozen=True)
class Calibration:
    images: int
    accuracy: float
    temperature: float
    ece_before: float
    ece_after: float
    model_file: Path  # where the calibrated card was written
    plot: Path


def calibrate(
    im: InferenceModel,
    model_file: str | os.PathLike,
    data: str,
    batch_size: int,
    num_images: int,
    plot: str | os.PathLike,
    out: str | os.PathLike | None = None,
) -> Calibration:
    """Fit the temperature on `data`, draw the reliability diagram to `plot`, store the temperature in the card of
    `model_file` (or of a copy at `out`). The ECE after is cross-fitted (`cross_fitted_probs`): a temperature
    scored on the images it was fitted on would flatter itself."""
    logits, labels = collect_logits(im, data, batch_size, num_images)
    t = fit_temperature(logits, labels)
    before, after = logits.softmax(-1), cross_fitted_probs(logits, labels)
    reliability_diagram(before, after, labels, str(plot), t)
    return Calibration(
        images=len(labels),
        accuracy=float((logits.argmax(1) == labels).float().mean()),
        temperature=t,
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        model_file=store_temperature(model_file, t, out),
        plot=Path(plot),
    )
