"""Where a training step's time goes, for a shipped config: attention, MLP, the rest of forward + backward, the
optimiser step, and the data (one batch from the config's loader). Each part is timed on its own at the step's real
shapes (median of rounds, interleaved), next to the whole step.

    python scripts/profile_step.py configs/cifar10_cpu.yaml --data-root ../shared/data/cifar10
    python scripts/profile_step.py configs/cifar10_cpu.yaml --data-root ... --compile --model.patch_drop_rate 0.75
    python scripts/profile_step.py configs/cifar10_cpu.yaml --data-root ... --trainer.precision 32-true

Any further `--section.key value` is passed to the config, as `vit-app fit` takes it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vit_app.cli import build_cli  # noqa: E402
from vit_app.module import downsample  # noqa: E402


def timed(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved, one warm-up call each."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--data-root", help="data.root for the config")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="also time the step with torch.compile (interleaved)")
    args, overrides = p.parse_known_args()
    bad = [a for a in overrides if a.startswith("-") and not a.startswith(("--data.", "--model.", "--trainer."))]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (config overrides are --data.*, --model.*, --trainer.*)")
    extra = ["--data.root", args.data_root] if args.data_root else []
    try:
        cli = build_cli(["--config", args.config, *extra, *overrides, "--trainer.logger", "false"], run=False)
    except Exception as e:  # a bad key, value or data folder: one line, as vit-app fit says it
        p.error(f"{args.config}: {e}")
    dm, module = cli.datamodule, cli.model
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    x, y = next(loader)[:2]
    if module.hparams.low_res_size:  # the low-resolution phase's step, as training takes it
        x = downsample(x, module.hparams.low_res_size)
    model = module.model.train()
    model.patch_drop_rate = module.hparams.patch_drop_rate
    opt = module.build_optimizer()
    bf16 = str(cli.trainer.precision).startswith("bf16")  # the run's: the automatic rule, or --trainer.precision
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

    def step() -> None:
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    compiled = torch.compile(model) if args.compile else None

    def step_compiled() -> None:
        assert compiled is not None
        with autocast():
            loss = F.cross_entropy(compiled(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    compile_s = 0.0
    if compiled is not None:  # the first call compiles: timed apart, as a run would pay it once
        t0 = time.perf_counter()
        step_compiled()
        compile_s = time.perf_counter() - t0

    def fwd_bwd() -> None:
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    with torch.no_grad():
        tokens, d2 = model.tokens_and_distances(x)  # (B, P + kept, D): what the blocks see, PatchDropout included
    blk = model.blocks[0]
    t_in = tokens.detach().requires_grad_(True)

    def attention() -> None:  # every block's attention branch, forward + backward
        with autocast():
            out = blk.attn(blk.norm1(t_in), d2=d2)[0]
        out.float().sum().backward()

    def mlp() -> None:
        with autocast():
            out = blk.mlp(blk.norm2(t_in))
        out.float().sum().backward()

    def optimiser() -> None:
        for q in model.parameters():
            q.grad = torch.zeros_like(q) if q.requires_grad else None
        opt.step()

    def data() -> None:
        next(loader)

    fns = {"step": step, "fwd_bwd": fwd_bwd, "attention": attention, "mlp": mlp, "optimiser": optimiser, "data": data}
    if compiled is not None:
        fns["step_compiled"] = step_compiled
    t = timed(fns, args.rounds)
    depth = len(model.blocks)
    parts = {"attention (all blocks)": depth * t["attention"], "MLP (all blocks)": depth * t["mlp"]}
    parts["rest of forward + backward"] = max(0.0, t["fwd_bwd"] - sum(parts.values()))
    parts["optimiser step"] = t["optimiser"]
    parts["data (one batch)"] = t["data"]
    whole = t["step"] + t["data"]
    head = f"{Path(args.config).name}: batch {len(y)}, {tokens.shape[1]} tokens, {'bf16' if bf16 else 'fp32'}"
    print(f"{head}, {torch.get_num_threads()} threads: step {1000 * t['step']:.1f} ms + data {1000 * t['data']:.1f} ms")
    print(f"{'part':<28}{'ms':>8}{'share':>8}")
    for k, v in parts.items():
        print(f"{k:<28}{1000 * v:>8.1f}{100 * v / whole:>7.1f}%")
    if compiled is not None:
        ratio = t["step"] / t["step_compiled"]
        print(f"torch.compile: step {1000 * t['step_compiled']:.1f} ms against {1000 * t['step']:.1f} ms eager "
              f"({ratio:.2f}x), first call (compiling) {compile_s:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
