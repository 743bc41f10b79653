"""Score a CIFAR run's per-epoch checkpoints on the test split after the run: the test curve (accuracy against the
training minute each checkpoint was written), the time to each accuracy, and a PNG, optionally beside a baseline.

    python scripts/test_curve.py runs/cifar10_cpu/version_0 --data-root ../shared/data/cifar10 \\
        --baseline timm_baseline.json --png docs/cifar10_cpu_curves.png

Given the JSON it wrote instead of a run folder, it draws that curve again (beside a baseline run later, say)
without scoring the checkpoints again: `python scripts/test_curve.py runs/.../test_curve.json --baseline B.json
--png curves.png`.

The run saves checkpoints/epochNNN.ckpt (configs/cifar10_cpu.yaml asks for them); each card records its training
minutes. Nothing here steers training: the test split is read once the run is over.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vit_app.inference import load_for_inference  # noqa: E402
from vit_app.tta import TTA_CHOICES  # noqa: E402


@torch.no_grad()
def test_accuracy(ckpt: Path, x: torch.Tensor, y: torch.Tensor, tta: str = "none") -> tuple[float, float]:
    """(test top-1, training minutes) of a checkpoint on uint8 images (N, 3, 32, 32), with test-time augmentation
    `tta` (vit_app.tta)."""
    m = load_for_inference(ckpt)
    mean = torch.tensor(m.card.input.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(m.card.input.std).view(1, 3, 1, 1) * 255
    correct = 0
    for i in range(0, len(y), 1000):
        logits = m.logits((x[i : i + 1000].float() - mean) / std, tta)  # (<=1000, C)
        correct += int((logits.argmax(-1) == y[i : i + 1000]).sum())
    return correct / len(y), float(m.card.provenance.train_minutes or float("nan"))


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
    p.add_argument("--data-root", help="folder holding cifar-10-batches-py/ (needed to score a run folder)")
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
    if Path(args.run_dir).is_file():  # a curve already scored: draw it again
        out = json.loads(Path(args.run_dir).read_text())
        if args.png:
            plot(out["curve"], args.baseline, args.png)
        return
    if not args.data_root:
        p.error("--data-root is needed to score a run folder")
    from torchvision.datasets import CIFAR10

    test = CIFAR10(args.data_root, train=False)
    x, y = torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(test.targets)
    curve = []
    for c in checkpoints(Path(args.run_dir), args.every):
        if c.exists():
            acc, minutes = test_accuracy(c, x, y, args.tta)
            curve.append({"checkpoint": c.name, "minutes": minutes, "test_acc1": acc})
            print(f"{c.name}: {minutes:.1f} min, test top-1 {100 * acc:.2f} %", flush=True)
    curve.sort(key=lambda r: r["minutes"])
    marks = {f"{int(100 * t)}": time_to(curve, t) for t in (0.7, 0.8, 0.85, 0.88, 0.9)}
    print(
        "time to: "
        + ", ".join(f"{k} %: {v:.1f} min" if v is not None else f"{k} %: not reached" for k, v in marks.items())
    )
    out = {
        "tta": args.tta,
        "curve": curve,
        "time_to_min": marks,
        "final_test_acc1": curve[-1]["test_acc1"] if curve else None,
    }
    Path(args.json or Path(args.run_dir) / "test_curve.json").write_text(json.dumps(out, indent=2))
    if args.png:
        plot(curve, args.baseline, args.png)


def plot(curve: list[dict], baseline: str | None, png: str) -> None:
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
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
