"""Score a CIFAR run's per-epoch checkpoints on the test split after the run: the test curve (accuracy against the
training minute each checkpoint was written), the time to each accuracy, and a PNG, optionally beside a baseline.

    python scripts/test_curve.py runs/cifar10_cpu/version_0 --data-root ../shared/data/cifar10 \\
        --baseline timm_baseline.json --png docs/cifar10_cpu_curves.png

Given the JSON it wrote instead of a run folder, it draws that curve again (beside a baseline run later, say)
without scoring the checkpoints again: `python scripts/test_curve.py runs/.../test_curve.json --baseline B.json
--png curves.png`.

The run saves checkpoints/epochNNN.ckpt (configs/cifar10_cpu.yaml asks for them); each card records its training
minutes. Nothing here steers training: the test split is read once the run is over. The data is the run's own
(CIFAR-10 or CIFAR-100 test split, an image folder's val/, as its checkpoints' card says) under --data-root, or
any labelled vit-app --data form given with --data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vit_app.errors import ConfigError, UserError  # noqa: E402
from vit_app.evaldata import batches, data_of, open_data, parse_data, spec_for  # noqa: E402
from vit_app.inference import InferenceModel, load_for_inference  # noqa: E402
from vit_app.tta import TTA_CHOICES  # noqa: E402


def test_set(m: InferenceModel, spec: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled images of `spec` (a vit-app --data form), at most `limit`, through the model's evaluation
    transform, once for every checkpoint: x (N, 3, S, S) normalised, y (N,)."""
    n, samples = open_data(parse_data(spec), m.class_names, m.card.input.img_size, limit, labels=True)
    xs, ys = zip(*((x, y) for x, y, _ in batches(samples, m.transform, 500))) if n else ((), ())
    if not xs:
        raise ConfigError(f"--data {spec}: no readable labelled images")
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def test_accuracy(m: InferenceModel, x: torch.Tensor, y: torch.Tensor, tta: str = "none") -> float:
    """Top-1 of a model on normalised images x (N, 3, S, S), with test-time augmentation `tta` (vit_app.tta)."""
    correct = 0
    for i in range(0, len(y), 1000):
        logits = m.logits(x[i : i + 1000], tta)  # (<=1000, C)
        correct += int((logits.argmax(-1) == y[i : i + 1000]).sum())
    return correct / len(y)


def checkpoints(run_dir: Path, every: int = 1) -> list[Path]:
    """The run's checkpoints to score: every `every`-th epoch checkpoint (the every-th, 2 x every-th, ...), the last
    epoch's whatever `every`, then last.ckpt (scored only where it exists)."""
    epochs = sorted(run_dir.glob("checkpoints/epoch*.ckpt"))
    picked = [c for i, c in enumerate(epochs) if (i + 1) % every == 0 or i == len(epochs) - 1]
    return picked + [run_dir / "checkpoints" / "last.ckpt"]


def time_to(curve: list[dict], target: float) -> float | None:
    """The first minute at which the test curve reaches `target`."""
    return next((c["minutes"] for c in curve if c["test_acc1"] >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder holding checkpoints/epoch*.ckpt, or a curve JSON this script wrote")
    p.add_argument(
        "--data-root",
        help="the run's data.root: the folder holding cifar-10-batches-py/ (or cifar-100-python/, or an image "
        "folder's train/ and val/); default: the one its checkpoints' card records",
    )
    p.add_argument("--data", help="score on this instead: any labelled vit-app --data form (cifar10:ROOT, folder:DIR)")
    p.add_argument("--num-images", type=int, help="score at most this many (default: all; the synthetic set: 2000)")
    p.add_argument("--baseline", help="timm_baseline.py's JSON, drawn beside this run")
    p.add_argument("--png", help="write the curves here")
    p.add_argument(
        "--tta",
        choices=TTA_CHOICES,
        default="none",
        help="test-time augmentation: flip averages each image's logits with its mirror's; flip_shift over 18 views,"
        " the image moved by a quarter patch on a 3 x 3 grid and mirrored (18x the time; default none)",
    )
    p.add_argument(
        "--every",
        type=int,
        default=1,
        help="score every N-th epoch checkpoint (and always the last): a costly --tta over fewer points",
    )
    p.add_argument("--json", help="write the curve here (default: RUN_DIR/test_curve.json)")
    args = p.parse_args()
    if args.every < 1:
        p.error(f"--every must be at least 1, got {args.every}")
    if args.num_images is not None and args.num_images < 1:
        p.error(f"--num-images must be at least 1, got {args.num_images}")
    try:
        score(args)
    except UserError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")


def redraw(curve_json: Path, args: argparse.Namespace) -> None:
    """A curve this script wrote, drawn again (beside a baseline, say)."""
    try:
        saved = json.loads(curve_json.read_text())
        curve, data = saved["curve"], saved.get("data")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"{curve_json}: not a curve JSON this script wrote; give a run folder (runs/NAME/version_N) "
                          "or its test_curve.json") from None  # fmt: skip
    if args.png:
        plot(curve, args.baseline, args.png, data)


def score(args: argparse.Namespace) -> None:
    run = Path(args.run_dir)
    if run.is_file():
        return redraw(run, args)
    if not run.is_dir():
        raise ConfigError(f"{run}: no such folder (give a run folder, e.g. runs/cifar10_cpu/version_0)")
    found = [c for c in checkpoints(run, args.every) if c.exists()]
    if not found:
        raise ConfigError(f"{run}: no checkpoints/epoch*.ckpt or checkpoints/last.ckpt here")
    first = load_for_inference(found[0])
    if args.data:
        spec = args.data
    elif args.data_root:
        spec = spec_for(first.card.provenance.dataset or "", args.data_root)
    else:
        try:
            spec = data_of(first.card)
        except ConfigError as e:
            raise ConfigError(f"{e}; give --data-root (the run's data.root) or --data") from None
    limit = args.num_images or (2000 if spec == "synthetic" else 10**9)  # the synthetic set is an endless stream
    x, y = test_set(first, spec, limit)
    print(f"scoring {len(found)} checkpoint{'s' * (len(found) > 1)} on {len(y)} images of {spec}", flush=True)
    curve = []
    for c in found:
        m = first if c == found[0] else load_for_inference(c)
        if (m.card.input, m.class_names) != (first.card.input, first.class_names):
            raise ConfigError(f"{c}: another input size, normalisation or class list than {found[0]}: not one run")
        acc, minutes = test_accuracy(m, x, y, args.tta), float(m.card.provenance.train_minutes or float("nan"))
        curve.append({"checkpoint": c.name, "minutes": minutes, "test_acc1": acc})
        print(f"{c.name}: {minutes:.1f} min, test top-1 {100 * acc:.2f} %", flush=True)
    curve.sort(key=lambda r: r["minutes"])
    marks = {f"{int(100 * t)}": time_to(curve, t) for t in (0.7, 0.8, 0.85, 0.88, 0.9)}
    print(
        "time to: "
        + ", ".join(f"{k} %: {v:.1f} min" if v is not None else f"{k} %: not reached" for k, v in marks.items())
    )
    out = {
        "data": spec,
        "tta": args.tta,
        "curve": curve,
        "time_to_min": marks,
        "final_test_acc1": curve[-1]["test_acc1"] if curve else None,
    }
    Path(args.json or Path(args.run_dir) / "test_curve.json").write_text(json.dumps(out, indent=2))
    if args.png:
        plot(curve, args.baseline, args.png, spec)


def data_name(spec: str | None) -> str:
    """A short name for a --data form, for the axis: CIFAR-10, CIFAR-100, synthetic, or an image folder's name."""
    kind, _, rest = (spec or "").partition(":")
    names = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "synthetic": "synthetic", "": ""}
    if kind in names:
        return names[kind]
    folder = Path(rest)
    return (folder.parent.name if folder.name in ("val", "test", "train") else folder.name) if kind == "folder" else ""


def plot(curve: list[dict], baseline: str | None, png: str, data: str | None = None) -> None:
    """The test curve (and a baseline's, from timm_baseline.py's JSON) against training minutes, to `png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([c["minutes"] for c in curve], [100 * c["test_acc1"] for c in curve], "o-", label="vit-app")
    if baseline:
        base = json.loads(Path(baseline).read_text())["test_curve"]
        ax.plot([c["minutes"] for c in base], [100 * c["test_acc1"] for c in base], "s-", label="timm baseline")
    ax.axhline(80, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training minutes (wall clock of the run)")
    ax.set_ylabel(f"{data_name(data)} test top-1 (%)".lstrip())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
