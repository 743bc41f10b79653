#!/usr/bin/env python
"""GPU check, one script, < 8 minutes on one H200 (needs nothing outside the repository):

    python scripts/gpu_check.py [--quick] [--json gpu_check.json]

Prints (1) training and inference throughput (img/s) of ViT-S/16 and ViT-B/16 at 224 px, bf16 autocast, eager and
torch.compile'd; (2) the explain overhead (maps + rollout vs a plain fused forward); (3) a short training run on the
synthetic dataset with the GPU-resident loader, with its accuracy. Every figure is a median over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vit_app.explain.rollout import attention_rollout  # noqa: E402
from vit_app.model import create_model  # noqa: E402


def timed(fn, rounds: int, iters: int) -> float:
    """Median seconds per call over `rounds` rounds of `iters` calls (after a warm-up round)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / iters)
    return statistics.median(times)


def throughput(name: str, compiled: bool, batch: int, rounds: int, iters: int) -> dict:
    model = create_model(name).cuda()
    fwd = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")

    def train() -> None:
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(fwd(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer() -> None:
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            fwd(x)

    row = {"model": name, "compiled": compiled, "batch": batch}
    row["train_img_s"] = batch / timed(train, rounds, iters)
    row["infer_img_s"] = batch / timed(infer, rounds, iters)
    return row


def explain_overhead(batch: int, rounds: int, iters: int) -> dict:
    model = create_model("vit_base_patch16_224").cuda().eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda")

    def plain() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(x)

    def explained() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            _, attns = model.forward_with_attention(x, head_fusion="mean")
            attention_rollout(attns)

    tp, te = timed(plain, rounds, iters), timed(explained, rounds, iters)
    return {"model": "vit_base_patch16_224", "batch": batch, "plain_ms": 1000 * tp, "explain_ms": 1000 * te,
            "x_plain": te / tp}  # fmt: skip


def short_run(epochs: int) -> dict:
    """Train the quickstart config on the GPU with the GPU-resident loader; report time and accuracy."""
    import tempfile

    from vit_app.cli import build_cli

    out = tempfile.mkdtemp()
    cfg = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    args = ["fit", "--config", cfg, "--data.loader", "memory", "--data.memory_device", "cuda"]
    args += ["--trainer.max_epochs", str(epochs), "--trainer.accelerator", "gpu", "--trainer.devices", "1"]
    args += ["--trainer.logger.init_args.save_dir", out, "--trainer.enable_progress_bar", "false"]
    t = time.perf_counter()
    cli = build_cli(args)
    seconds = time.perf_counter() - t
    acc = float(cli.trainer.callback_metrics.get("val/acc1", float("nan")))
    return {"dataset": "synthetic shapes (quickstart config, GPU-resident loader)", "epochs": epochs,
            "seconds": seconds, "val_acc1": acc}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--json", default="gpu_check.json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here")
    torch.backends.cuda.matmul.allow_tf32 = True
    rounds, iters = (3, 5) if args.quick else (5, 10)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, batch {args.batch}, bf16 autocast", flush=True)
    rows = []
    for name in ("vit_small_patch16_224", "vit_base_patch16_224"):
        for compiled in (False, True):
            rows.append(throughput(name, compiled, args.batch, rounds, iters))
            torch.cuda.empty_cache()
            r = rows[-1]
            print(f"{name:24s} {'compiled' if compiled else 'eager':8s} train {r['train_img_s']:8.0f} img/s   "
                  f"infer {r['infer_img_s']:8.0f} img/s", flush=True)  # fmt: skip
    ex = explain_overhead(64, rounds, iters)
    print(f"explain (ViT-B/16, batch 64): plain {ex['plain_ms']:.1f} ms, maps+rollout {ex['explain_ms']:.1f} ms, "
          f"{ex['x_plain']:.2f}x", flush=True)  # fmt: skip
    run = short_run(epochs=3 if args.quick else 5)
    print(f"short run: {run['dataset']}, {run['epochs']} epochs in {run['seconds']:.0f} s, "
          f"val top-1 {100 * run['val_acc1']:.1f} %", flush=True)  # fmt: skip
    Path(args.json).write_text(json.dumps({"throughput": rows, "explain": ex, "run": run}, indent=2))


if __name__ == "__main__":
    main()
