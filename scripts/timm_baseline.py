"""The baseline for CPU time-to-accuracy: a plain timm ViT with the recipe a careful user would run, for a wall-clock
budget, on CIFAR-10.

    python scripts/timm_baseline.py --data-root ../shared/data/cifar10 --minutes 30 --json timm_baseline.json

The recipe: timm's VisionTransformer, 6 blocks x 128 wide, 4 heads, 4-px patches (MLP ratio 4, timm's default);
bf16 autocast where it trains faster than fp32 (AMX, or AVX512-BF16 on AMD), else fp32 (vit-app's own rule); the
training set held in memory as uint8, each image randomly cropped (4-px reflect padding) and flipped, the batch
augmented at once; batch 128; AdamW (lr 1e-3, weight decay 0.05 on weight matrices only, betas 0.9 / 0.999);
linear warm-up over the first 5 % of the budget, then a cosine to zero that ends with it; label smoothing 0.1. None
of the recipe is ours.

The test split is never seen during the budget: the weights are kept at the end of every epoch (in memory) and
scored afterwards, which gives the test curve (accuracy against the minute it was reached) and the time to each
accuracy. Prints one line an epoch, the curve, and writes it all as JSON. `--tta flip_shift` also scores the final
weights with the test-time augmentation `scripts/test_curve.py --tta` gives vit-app's, for a like-for-like figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vit_app.data.roots import CIFAR_FOLDERS, root_hint  # where CIFAR-10 lives under --data-root
from vit_app.precision import cpu_bf16_training_pays, cpu_description  # the CPU's facts, not vit-app's recipe
from vit_app.tta import TTA_CHOICES, tta_logits, view_shift  # evaluation only: the same views as vit-app's

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
PATCH = 4  # the patch side, px


def lr_at(frac: float, base: float, warmup: float = 0.05) -> float:
    """Linear warm-up, then cosine to zero, over the fraction of the time budget spent."""
    if frac < warmup:
        return base * (frac + 1e-3) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - warmup) / (1 - warmup))))


def crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-image random crop (reflect padding) and horizontal flip of a uint8 batch (B, 3, H, W), all at once."""
    B, _, H, W = x.shape
    xp = F.pad(x.float(), (pad,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    rows = (dy[:, None] + torch.arange(H))[:, :, None]
    cols = (dx[:, None] + torch.arange(W))[:, None, :]
    out = xp.permute(0, 2, 3, 1)[torch.arange(B)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(B, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             bf16: bool, tta: str = "none") -> float:  # fmt: skip
    """Top-1 of uint8 images x (N, 3, 32, 32), with test-time augmentation `tta` (vit_app.tta)."""
    model.eval()
    correct = 0
    for i in range(0, len(y), 500):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = tta_logits(model, (x[i : i + 500].float() - mean) / std, tta, view_shift(PATCH))
        correct += int((logits.argmax(-1) == y[i : i + 500]).sum())
    model.train()
    return correct / len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    auto = "auto: bf16 autocast where it trains faster than fp32 on this CPU (vit-app's rule)"
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help=auto)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="timm_baseline.json")
    p.add_argument("--tta", choices=TTA_CHOICES, default="none",
                   help="also score the final weights with this test-time augmentation (vit_app.tta), as "
                   "`scripts/test_curve.py --tta` scores vit-app's; the curve stays plain")  # fmt: skip
    args = p.parse_args()
    for name, ok in (("--minutes", args.minutes > 0), ("--batch-size", 1 <= args.batch_size <= 50_000),
                     ("--lr", args.lr > 0)):  # fmt: skip
        if not ok:
            p.error(f"{name} must be positive{' and at most 50000 (the training set)' * (name == '--batch-size')}, "
                    f"got {getattr(args, name[2:].replace('-', '_'))}")  # fmt: skip
    folder = Path(args.data_root) / CIFAR_FOLDERS["cifar10"]
    if not folder.is_dir():
        hint = root_hint(args.data_root, "cifar10", folder.name, use=lambda _: "this baseline trains on CIFAR-10")
        p.error(f"--data-root: '{folder}' does not exist{hint}")
    torch.manual_seed(args.seed)
    bf16 = cpu_bf16_training_pays() if args.precision == "auto" else args.precision == "bf16"

    from timm.models.vision_transformer import VisionTransformer  # here: a mistaken argument is refused at once
    from torchvision.datasets import CIFAR10

    train, test = CIFAR10(args.data_root, train=True), CIFAR10(args.data_root, train=False)
    xtr = torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous()  # (50000, 3, 32, 32) uint8
    ytr = torch.tensor(train.targets)
    xte, yte = torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(test.targets)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255

    model = VisionTransformer(img_size=32, patch_size=PATCH, num_classes=10, embed_dim=128, depth=6, num_heads=4)
    decay = [q for n, q in model.named_parameters() if q.ndim > 1 and n not in ("pos_embed", "cls_token")]
    no_decay = [q for n, q in model.named_parameters() if q.ndim <= 1 or n in ("pos_embed", "cls_token")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.999))  # fmt: skip
    g = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60
    snapshots, history, step, epoch = [], [], 0, 0
    start = time.perf_counter()
    done = False
    while not done:
        perm = torch.randperm(len(ytr), generator=g)
        loss_sum = seen = 0.0
        for b in range(len(ytr) // args.batch_size):
            frac = (time.perf_counter() - start) / budget
            if frac >= 1.0:
                done = True
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(frac, args.lr)
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            x = (crop_flip(xtr[idx], g) - mean) / std
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
        elapsed = time.perf_counter() - start
        snapshots.append((elapsed, step, copy.deepcopy(model.state_dict())))
        history.append({"epoch": epoch, "steps": step, "minutes": elapsed / 60, "train_loss": loss_sum / max(seen, 1)})
        print(f"epoch {epoch}: {step} steps, {elapsed / 60:.1f} min, train loss {history[-1]['train_loss']:.3f}",
              flush=True)  # fmt: skip
        epoch += 1
    curve = []
    for elapsed, s, state in snapshots:  # after the budget: the test split never steers the run
        model.load_state_dict(state)
        curve.append({"minutes": elapsed / 60, "steps": s, "test_acc1": accuracy(model, xte, yte, mean, std, bf16)})
    final = curve[-1]["test_acc1"]
    print("test curve: " + ", ".join(f"{c['minutes']:.1f} min {100 * c['test_acc1']:.1f} %" for c in curve))
    print(f"timm baseline: test top-1 {final:.4f} after {step} steps ({step * args.batch_size / 50000:.2f} epochs), "
          f"{'bf16' if bf16 else 'fp32'}")  # fmt: skip
    out = {"test_acc1": final, "tta": "none", "test_acc1_tta": None,
           "steps": step, "minutes": args.minutes, "precision": "bf16" if bf16 else "fp32",
           "cpu": cpu_description(), "torch_threads": torch.get_num_threads(),
           "history": history, "test_curve": curve}  # fmt: skip
    Path(args.json).write_text(json.dumps(out, indent=2))
    if args.tta != "none":  # the final weights again, with the views (the JSON above is kept if this fails)
        out["tta"], out["test_acc1_tta"] = args.tta, accuracy(model, xte, yte, mean, std, bf16, args.tta)
        print(f"timm baseline: test top-1 with --tta {args.tta}: {out['test_acc1_tta']:.4f}")
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
