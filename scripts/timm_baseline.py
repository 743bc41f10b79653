"""The baseline for CPU time-to-accuracy: a plain timm ViT with a standard CIFAR recipe, for a wall-clock budget.

    python scripts/timm_baseline.py --data-root ../shared/data/cifar10 --minutes 30

What "standard" means here (the ViT-on-CIFAR repositories' recipe, with its schedule fitted to the budget so that the
comparison is about everything else): timm's VisionTransformer at ViT-Ti width (192, depth 12, 3 heads) with 4-px
patches, fp32, torchvision's CIFAR10 with per-image RandomCrop(32, pad 4) + flip in DataLoader workers, batch 128,
AdamW (lr 1e-3, weight decay 0.05), label smoothing 0.1, linear warm-up over the first 5 % of the budget and a cosine
decay that ends with it. It prints one line per epoch and the test accuracy, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def lr_at(frac: float, base: float, warmup: float = 0.05) -> float:
    """Linear warm-up, then cosine to zero, over the fraction of the time budget spent."""
    if frac < warmup:
        return base * frac / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - warmup) / (1 - warmup))))


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += len(y)
    model.train()
    return correct / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default="timm_baseline.json")
    args = p.parse_args()
    torch.manual_seed(0)

    train_tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
         transforms.Normalize(MEAN, STD)]
    )  # fmt: skip
    test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train = datasets.CIFAR10(args.data_root, train=True, transform=train_tf, download=False)
    test = datasets.CIFAR10(args.data_root, train=False, transform=test_tf, download=False)
    train_loader = DataLoader(
        train, args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers, persistent_workers=True
    )
    test_loader = DataLoader(test, 256, num_workers=args.workers)

    model = VisionTransformer(
        img_size=32, patch_size=4, num_classes=10, embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    budget = args.minutes * 60
    history, step, epoch = [], 0, 0
    start = time.perf_counter()
    done = False
    while not done:
        seen = loss_sum = 0.0
        for x, y in train_loader:
            frac = (time.perf_counter() - start) / budget
            if frac >= 1.0:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(frac, 1e-3)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(y)
            loss_sum += loss.item() * len(y)
        elapsed = time.perf_counter() - start
        history.append({"epoch": epoch, "steps": step, "minutes": elapsed / 60, "train_loss": loss_sum / max(seen, 1)})
        print(f"epoch {epoch}: {step} steps, {elapsed / 60:.1f} min, train loss {history[-1]['train_loss']:.3f}")
        epoch += 1
    acc = evaluate(model, test_loader)
    print(f"timm baseline: test top-1 {acc:.4f} after {step} steps ({step * args.batch_size / 50000:.2f} epochs)")
    out = {"test_acc1": acc, "steps": step, "minutes": args.minutes, "history": history}
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
