"""How right is a map? Pointing game and mask mass (where the object is known), deletion and insertion curves
(anywhere), each against a random baseline."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vit_app.errors import ConfigError
from vit_app.evaldata import batches, open_data, parse_data
from vit_app.explain.engine import explain
from vit_app.inference import InferenceModel
from vit_app.model import VisionTransformer
from vit_app.progress import bar


def cell_coverage(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Object masks (B, H, W) -> fraction of each patch cell covered by the object (B, gh, gw)."""
    return F.adaptive_avg_pool2d(masks.float()[:, None], grid)[:, 0]


def pointing_and_mass(maps: Tensor, coverage: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: is the map's maximum on a cell that is mostly object (pointing game), and the share of the
    (non-negative) map's mass on the object, weighting each cell by its coverage. Both (B,)."""
    m = maps.float().clamp_min(0).flatten(1)  # (B, N)
    cov = coverage.float().flatten(1)
    hit = cov.gather(1, m.argmax(dim=1, keepdim=True))[:, 0] >= 0.5
    mass = (m * cov).sum(1) / m.sum(1).clamp_min(1e-12)
    return hit.float(), mass


def perturbation_curves(
    model: VisionTransformer,
    x: Tensor,
    maps: Tensor,
    target: Tensor,
    steps: int = 16,
    chunk: int = 256,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Deletion and insertion curves (B, steps + 1): the target's probability (softmax(logits / temperature)) as
    patches are removed (set to the mean colour, 0 after normalisation) or revealed on a mean-colour canvas, most
    important first."""
    B, C, H, W = x.shape
    gh, gw = maps.shape[-2:]
    N = gh * gw
    order = maps.flatten(1).argsort(dim=1, descending=True)  # (B, N) patch indices, most important first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(N, device=x.device).expand(B, N))  # rank of patch
    counts = torch.round(torch.linspace(0, N, steps + 1, device=x.device)).long()  # patches affected at each step
    chosen = rank[:, None, :] < counts[None, :, None]  # (B, S, N): patch is among the first k
    chosen = chosen.view(B, steps + 1, 1, gh, gw).float()
    up = F.interpolate(chosen.flatten(0, 1), size=(H, W), mode="nearest").view(B, steps + 1, 1, H, W)
    xs = x[:, None]  # (B, 1, C, H, W)
    deleted = xs * (1 - up)  # removed patches -> 0 (the mean colour)
    inserted = xs * up  # only revealed patches
    curves = []
    for variants in (deleted, inserted):
        flat = variants.flatten(0, 1)  # (B * S, C, H, W)
        tgt = target.repeat_interleave(steps + 1)
        probs = []
        with torch.no_grad():
            for i in range(0, flat.shape[0], chunk):
                p = torch.softmax(model(flat[i : i + chunk]).float() / temperature, dim=-1)
                probs.append(p.gather(1, tgt[i : i + chunk, None])[:, 0])
        curves.append(torch.cat(probs).view(B, steps + 1))
    return curves[0], curves[1]


def auc(curve: Tensor) -> Tensor:
    """Area under each (B, S) curve over [0, 1] (trapezoid rule)."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


@dataclass
class MethodScores:
    pointing: list[float] = field(default_factory=list)
    mass: list[float] = field(default_factory=list)
    deletion: list[Tensor] = field(default_factory=list)  # curves (B, S)
    insertion: list[Tensor] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.pointing:
            out["pointing"] = float(np.mean(self.pointing))
            out["mass_in_mask"] = float(np.mean(self.mass))
        if self.deletion:
            out["deletion_auc"] = float(auc(torch.cat(self.deletion)).mean())
            out["insertion_auc"] = float(auc(torch.cat(self.insertion)).mean())
        return out

    def mean_curves(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.deletion:
            return None
        return torch.cat(self.deletion).mean(0).numpy(), torch.cat(self.insertion).mean(0).numpy()


def evaluate_maps(
    model: VisionTransformer,
    batches: Iterable[tuple[Tensor, Tensor | None, Tensor | None]],
    methods: list[str],
    steps: int = 16,
    discard_ratio: float = 0.0,
    seed: int = 0,
    layer: int = -1,
    temperature: float = 1.0,
) -> dict[str, MethodScores]:
    """Score every method (and a 'random' map) over batches of (normalised images, labels or None, object masks or
    None); the curves use the calibrated probabilities softmax(logits / temperature)."""
    scores = {m: MethodScores() for m in [*methods, "random"]}
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    for x, _, masks in batches:
        x = x.to(dev)
        base = explain(model, x, "rollout", discard_ratio=discard_ratio, temperature=temperature)
        target = base.probs.argmax(dim=1)  # every method explains the predicted class
        grid = tuple(base.maps.shape[-2:])
        for name in scores:
            if name == "random":
                maps = torch.rand(x.shape[0], *grid, generator=g).to(dev)
            elif name == "rollout":
                maps = base.maps
            else:
                maps = explain(model, x, name, discard_ratio=discard_ratio, layer=layer).maps  # type: ignore[arg-type]
            s = scores[name]
            if masks is not None:
                hit, mass = pointing_and_mass(maps.cpu(), cell_coverage(masks, grid))  # type: ignore[arg-type]
                s.pointing += hit.tolist()
                s.mass += mass.tolist()
            d, i = perturbation_curves(model, x, maps, target, steps, temperature=temperature)
            s.deletion.append(d.cpu())
            s.insertion.append(i.cpu())
    return scores


def format_table(results: dict[str, dict[str, float]]) -> str:
    cols = ["pointing", "mass_in_mask", "deletion_auc", "insertion_auc"]
    cols = [c for c in cols if any(c in r for r in results.values())]
    head = f"{'method':<14}" + "".join(f"{c:>15}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:<14}" + "".join(f"{r[c]:>15.3f}" if c in r else f"{'-':>15}" for c in cols))
    lines.append("pointing, mass_in_mask, insertion_auc: higher is better; deletion_auc: lower is better")
    return "\n".join(lines)


def plot_results(scores: dict[str, MethodScores], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = {k: v.summary() for k, v in scores.items()}
    has_masks = any("pointing" in s for s in summaries.values())
    fig, axes = plt.subplots(1, 3 if has_masks else 2, figsize=(15 if has_masks else 10, 4))
    names = list(scores)
    if has_masks:
        ax = axes[0]
        w = 0.38
        xs = np.arange(len(names))
        ax.bar(xs - w / 2, [summaries[n]["pointing"] for n in names], w, label="pointing game")
        ax.bar(xs + w / 2, [summaries[n]["mass_in_mask"] for n in names], w, label="map mass in mask")
        ax.set_xticks(xs, names)
        ax.set_ylim(0, 1)
        ax.set_title("on the object (higher is better)")
        ax.legend()
    for ax, which, better in zip(axes[-2:], ("deletion", "insertion"), ("lower", "higher")):
        for n in names:
            curves = scores[n].mean_curves()
            if curves is None:
                continue
            c = curves[0] if which == "deletion" else curves[1]
            key = f"{which}_auc"
            ax.plot(np.linspace(0, 1, len(c)), c, label=f"{n} (AUC {summaries[n][key]:.3f})")
        ax.set_xlabel(f"fraction of patches {'removed' if which == 'deletion' else 'revealed'}")
        ax.set_ylabel("probability of the predicted class")
        ax.set_title(f"{which} ({better} AUC is better)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_explain_eval(
    im: InferenceModel,
    data: list[str],
    n: int,
    methods: list[str],
    steps: int,
    discard_ratio: float,
    out_dir: str,
    batch_size: int,
    layer: int = -1,
) -> str:
    """Score the methods on `data` (see vit_app.evaldata); write explain_eval.png / .json into out_dir and return the
    printed table."""
    spec = parse_data(data)
    count, samples = open_data(spec, im.class_names, im.card.input.img_size, n, labels=False)
    with bar(count, "explain-eval") as progress:

        def counted() -> Iterator[tuple[Tensor, Tensor | None, Tensor | None]]:
            for b in batches(samples, im.transform, batch_size):
                yield b
                progress.update(len(b[0]))

        scores = evaluate_maps(im.model, counted(), methods, steps, discard_ratio, layer=layer,
                               temperature=im.temperature)  # fmt: skip
    seen = sum(len(d) for d in scores["random"].deletion)
    if not seen:
        raise ConfigError(f"--data {spec.spec}: no readable images")
    description = f"{spec.describe()} ({seen} images{', with masks' if spec.kind == 'synthetic' else ''})"
    results = {k: v.summary() for k, v in scores.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_results(scores, str(out / "explain_eval.png"), f"attention maps on {description}")
    (out / "explain_eval.json").write_text(json.dumps({"data": description, "results": results}, indent=2))
    return f"data: {description}\n" + format_table(results)
