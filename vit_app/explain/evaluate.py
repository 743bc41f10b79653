"""How right is a map? Pointing game and mask mass (where the object is known), class-specific pointing on images
with two objects, deletion and insertion curves (anywhere); each against a random map drawn per image, each with a
95 % bootstrap interval, every seed fixed and stated."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def pair_pointing(maps: Tensor, target_cov: Tensor, other_cov: Tensor) -> Tensor:
    """Per image (B,): does the map's maximum fall on the asked-for object: its cell holds some of that object, and
    more of it than of the other object. The objects of a pair are too small to fill half a cell reliably."""
    idx = maps.float().flatten(1).argmax(dim=1, keepdim=True)
    t, o = target_cov.flatten(1).gather(1, idx)[:, 0], other_cov.flatten(1).gather(1, idx)[:, 0]
    return ((t > 0) & (t > o)).float()


def bootstrap(values: np.ndarray, seed: int = 0, resamples: int = 1000) -> tuple[float, float, float]:
    """(mean, low, high): the 95 % percentile bootstrap interval of the mean of per-image values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    means = v[idx].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@dataclass
class MethodScores:
    """Per-image scores of one method (over one or more models)."""

    pointing: list[float] = field(default_factory=list)
    mass: list[float] = field(default_factory=list)
    deletion: list[float] = field(default_factory=list)  # AUC per image
    insertion: list[float] = field(default_factory=list)
    pairs: list[float] = field(default_factory=list)  # per (image, asked class): pointing at the asked object
    pairs_seen: list[float] = field(default_factory=list)  # the same, on the pairs whose two classes are its top 2
    curves: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (deletion, insertion) (B, S) per batch

    def extend(self, other: MethodScores) -> None:
        for key in ("pointing", "mass", "deletion", "insertion", "pairs", "pairs_seen", "curves"):
            getattr(self, key).extend(getattr(other, key))

    def summary(self, seed: int = 0) -> dict[str, list[float]]:
        """Each score as [mean, low, high] (95 % bootstrap interval)."""
        keys = {"pointing": self.pointing, "mass_in_mask": self.mass, "deletion_auc": self.deletion,
                "insertion_auc": self.insertion, "pair_pointing": self.pairs,
                "pair_pointing_seen": self.pairs_seen}  # fmt: skip
        return {k: list(bootstrap(np.array(v), seed)) for k, v in keys.items() if v}

    def mean_curves(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.curves:
            return None
        d = torch.cat([c[0] for c in self.curves]).mean(0).numpy()
        return d, torch.cat([c[1] for c in self.curves]).mean(0).numpy()


def _maps(model: VisionTransformer, x: Tensor, name: str, g: torch.Generator, **kw) -> tuple[Tensor, Tensor]:
    """(maps, probs) of a method, or of a random map drawn per image from `g`."""
    if name == "random":
        ex = explain(model, x, "rollout", **{k: v for k, v in kw.items() if k == "temperature"})
        return torch.rand(ex.maps.shape, generator=g).to(x.device), ex.probs
    ex = explain(model, x, name, **kw)
    return ex.maps, ex.probs


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
    """Score every method (and a random map drawn per image, seeded) over batches of (normalised images, labels or
    None, object masks or None); every method explains the predicted class, and the curves use the calibrated
    probabilities softmax(logits / temperature)."""
    scores = {m: MethodScores() for m in [*methods, "random"]}
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    for x, _, masks in batches:
        x = x.to(dev)
        with torch.no_grad():
            target = model(x).argmax(dim=1)
        for name in scores:
            maps, _ = _maps(model, x, name, g, discard_ratio=discard_ratio, layer=layer, target=target,
                            temperature=temperature)  # fmt: skip
            s = scores[name]
            if masks is not None:
                hit, mass = pointing_and_mass(maps.cpu(), cell_coverage(masks, tuple(maps.shape[-2:])))
                s.pointing += hit.tolist()
                s.mass += mass.tolist()
            d, i = perturbation_curves(model, x, maps, target, steps, temperature=temperature)
            s.deletion += auc(d).cpu().tolist()
            s.insertion += auc(i).cpu().tolist()
            s.curves.append((d.cpu(), i.cpu()))
    return scores


def evaluate_pairs(
    im: InferenceModel, methods: list[str], n: int, batch_size: int, layer: int = -1, seed: int = 0
) -> dict[str, MethodScores]:
    """Class-specific pointing on the two-object split (synthetic models): each image is explained twice, once for
    each of its two classes; a hit is a map whose maximum falls on the asked-for object. `pairs_seen` keeps the
    images whose two classes are the model's top 2: there the model sees both, so the method alone is judged."""
    from PIL import Image

    from vit_app.data.synthetic import render_pair

    scores = {m: MethodScores() for m in [*methods, "random"]}
    g = torch.Generator().manual_seed(seed)
    size = im.card.input.img_size
    for start in range(0, n, batch_size):
        items = [render_pair(EVAL_STREAM, i, size) for i in range(start, min(n, start + batch_size))]
        x = torch.stack([im.transform(Image.fromarray(img)) for img, _, _ in items]).to(im.device)
        labels = torch.tensor([lab for _, lab, _ in items], device=im.device)  # (B, 2)
        masks = torch.stack([torch.from_numpy(m) for _, _, m in items])  # (B, 2, H, W)
        with torch.no_grad():
            top2 = im.model(x).topk(2, dim=1).indices
        seen = ((top2 == labels[:, :1]).any(1) & (top2 == labels[:, 1:]).any(1)).cpu()
        for k in (0, 1):
            for name in scores:
                maps, _ = _maps(im.model, x, name, g, layer=layer, target=labels[:, k])
                grid = tuple(maps.shape[-2:])
                hits = pair_pointing(maps.cpu(), cell_coverage(masks[:, k], grid), cell_coverage(masks[:, 1 - k], grid))
                scores[name].pairs += hits.tolist()
                scores[name].pairs_seen += hits[seen].tolist()
    return scores


def _cell(v: list[float] | None, digits: int = 3) -> str:
    if not v:
        return "-"
    m, lo, hi = v
    return f"{m:.{digits}f} [{lo:.{digits - 1}f}, {hi:.{digits - 1}f}]"


def format_table(results: dict[str, dict[str, list[float]]]) -> str:
    """The results as a table; [low, high] is each score's 95 % bootstrap interval."""
    cols = [("pointing", "pointing"), ("mass_in_mask", "mass in mask"), ("deletion_auc", "deletion AUC"),
            ("insertion_auc", "insertion AUC"), ("pair_pointing", "pairs: asked class"),
            ("pair_pointing_seen", "pairs it sees")]  # fmt: skip
    cols = [c for c in cols if any(c[0] in r for r in results.values())]
    rnd = results.get("random", {}).get("deletion_auc")
    w = max(len("method"), *map(len, results)) + 2  # the longest method name sets the first column
    head = f"{'method':<{w}}" + "".join(f"{title:>22}" for _, title in cols) + (f"{'del / random':>14}" if rnd else "")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        row = f"{name:<{w}}" + "".join(f"{_cell(r.get(k)):>22}" for k, _ in cols)
        if rnd and "deletion_auc" in r:
            row += f"{r['deletion_auc'][0] / rnd[0]:>14.2f}"
        lines.append(row)
    lines.append("pointing, mass in mask, insertion AUC, pairs: higher is better; deletion AUC: lower is better;")
    lines.append("pairs it sees: the two-object images whose two classes are the model's top 2")
    return "\n".join(lines)


def plot_results(scores: dict[str, MethodScores], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = {k: v.summary() for k, v in scores.items()}
    has_masks = any("pointing" in s for s in summaries.values())
    fig, axes = plt.subplots(1, 3 if has_masks else 2, figsize=(16 if has_masks else 10, 4.2))
    names = list(scores)
    if has_masks:
        ax = axes[0]
        bars = [("pointing", "pointing game"), ("mass_in_mask", "map mass in mask"), ("pair_pointing", "pairs")]
        bars = [b for b in bars if any(b[0] in summaries[n] for n in names)]
        w = 0.8 / len(bars)
        xs = np.arange(len(names))
        for j, (key, label) in enumerate(bars):
            vals = [summaries[n].get(key, [np.nan] * 3) for n in names]
            mean = np.array([v[0] for v in vals])
            err = np.array([[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]])
            ax.bar(xs + (j - (len(bars) - 1) / 2) * w, mean, w, yerr=err, capsize=2, label=label)
        ax.set_xticks(xs, names, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_title("on the object (higher is better; 95 % intervals)")
        ax.legend(fontsize=8)
    for ax, which, better in zip(axes[-2:], ("deletion", "insertion"), ("lower", "higher")):
        for n in names:
            curves = scores[n].mean_curves()
            if curves is None:
                continue
            c = curves[0] if which == "deletion" else curves[1]
            ax.plot(np.linspace(0, 1, len(c)), c, label=f"{n} (AUC {summaries[n][f'{which}_auc'][0]:.3f})")
        ax.set_xlabel(f"fraction of patches {'removed' if which == 'deletion' else 'revealed'}")
        ax.set_ylabel("probability of the predicted class")
        ax.set_title(f"{which} ({better} AUC is better)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EVAL_STREAM = 3000  # the synthetic stream explain-eval scores on: never a training or validation image


def _counted(items: Iterable[tuple[Tensor, Tensor | None, Tensor | None]], progress: Any) -> Iterator[Any]:
    for b in items:
        yield b
        progress.update(len(b[0]))


def run_explain_eval(
    models: list[InferenceModel],
    data: list[str],
    n: int,
    methods: list[str],
    steps: int,
    discard_ratio: float,
    out_dir: str,
    batch_size: int,
    layer: int = -1,
    pairs: bool = True,
    seed: int = 0,
) -> str:
    """Score the methods on `data` (see vit_app.evaldata) for every model, pooled over the models; write
    explain_eval.png / .json into out_dir and return the printed table. On synthetic data the two-object split is
    scored too (`pairs`)."""
    spec = parse_data(data)
    pooled = {m: MethodScores() for m in [*methods, "random"]}
    per_model = []
    for im in models:
        count, samples = open_data(spec, im.class_names, im.card.input.img_size, n, labels=False,
                                   synthetic_seed=EVAL_STREAM)  # fmt: skip
        with bar(count * (3 if spec.kind == "synthetic" and pairs else 1), "explain-eval") as progress:
            counted = _counted(batches(samples, im.transform, batch_size), progress)
            scores = evaluate_maps(im.model, counted, methods, steps, discard_ratio, seed=seed, layer=layer,
                                   temperature=im.temperature)  # fmt: skip
            if spec.kind == "synthetic" and pairs:
                for name, s in evaluate_pairs(im, methods, count, batch_size, layer, seed).items():
                    scores[name].pairs, scores[name].pairs_seen = s.pairs, s.pairs_seen
                progress.update(2 * count)
        seen = len(scores["random"].deletion)
        if not seen:
            raise ConfigError(f"--data {spec.spec}: no readable images")
        per_model.append({k: v.summary(seed) for k, v in scores.items()})
        for k, v in scores.items():
            pooled[k].extend(v)
    seen = len(pooled["random"].deletion) // len(models)
    masks = ", with masks and the two-object split" if spec.kind == "synthetic" and pairs else ""
    description = (f"{spec.describe()} ({seen} images a model{masks}; {len(models)} model(s); random maps and "
                   f"bootstrap seed {seed}; synthetic stream seed {EVAL_STREAM})")  # fmt: skip
    results = {k: v.summary(seed) for k, v in pooled.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_results(pooled, str(out / "explain_eval.png"), f"attention maps on {spec.describe()}")
    record = {"data": description, "results": results, "per_model": per_model,
              "models": [im.source for im in models]}  # fmt: skip
    (out / "explain_eval.json").write_text(json.dumps(record, indent=2))
    return f"data: {description}\n" + format_table(results)
