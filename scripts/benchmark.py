#!/usr/bin/env python
"""Side-by-side benchmark, in one process: our ViT vs timm's, the attention path (SDPA or explicit) per case, the cost
of explaining, the input pipeline, the slowdown check over a run, and `vit-app serve` with and without batching.

    python scripts/benchmark.py --quick --data-root ../shared/data        # < 3 minutes on 2 CPU cores
    python scripts/benchmark.py --rounds 8 --json bench.json              # more rounds

Every comparison is interleaved (A, B, then B, A, ...: who goes first rotates) with the thread count fixed, and
reports the median and min of the rounds; ratios are of medians. Peak memory is the growth of the process's peak
RSS (VmHWM, reset before each measurement) on CPU, or torch.cuda.max_memory_allocated on GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402

import vit_app.model as vit_model  # noqa: E402
from vit_app.explain.rollout import attention_rollout  # noqa: E402
from vit_app.model import VisionTransformer  # noqa: E402
from vit_app.precision import cpu_description  # noqa: E402

SIZES = {
    "ViT-Ti": dict(embed_dim=192, depth=12, num_heads=3),
    "ViT-S": dict(embed_dim=384, depth=12, num_heads=6),
}
RESOLUTIONS = {"32/4": dict(img_size=32, patch_size=4), "224/16": dict(img_size=224, patch_size=16)}


def _rss_peak_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    """Give freed heap memory back to the OS, reset the peak-RSS counter (Linux), return the current RSS in kB."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # else the step reuses pages already counted as resident
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure_peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Extra memory at the peak of one call of fn, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _reset_peak()
    fn()
    return max(0, _rss_peak_kb() - base) / 1024


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, iters: int, device: torch.device) -> dict:
    """Seconds per call of each fn: a warm-up, then `rounds` interleaved rounds of `iters` calls each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first: no order bias
            fn = fns[name]
            sync()
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            sync()
            times[name].append((time.perf_counter() - t) / iters)
    return {k: {"median": statistics.median(v), "min": min(v)} for k, v in times.items()}


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def model_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for size_name, size in SIZES.items():
        for res_name, res in RESOLUTIONS.items():
            kw = dict(**size, **res, num_classes=10 if res_name == "32/4" else 1000)
            torch.manual_seed(0)
            theirs = TimmViT(**kw).to(device)
            ours = VisionTransformer(**kw).to(device)
            ours.load_state_dict(theirs.state_dict(), strict=True)
            for precision in args.precisions:
                for mode in ("train", "infer"):
                    bs = args.batch_cifar if res_name == "32/4" else args.batch_224
                    x = torch.randn(bs, 3, res["img_size"], res["img_size"], device=device)
                    y = torch.randint(0, kw["num_classes"], (bs,), device=device)
                    fns = {}
                    for name, model in (("ours", ours), ("timm", theirs)):
                        opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "train" else None
                        fns[name] = _step_fn(model, opt, x, y, device, precision == "bf16")
                    t = interleaved(fns, args.rounds, args.iters, device)
                    mem = {k: measure_peak_mb(fn, device) for k, fn in fns.items()}
                    rows.append(
                        {
                            "section": "model",
                            "model": size_name,
                            "res": res_name,
                            "precision": precision,
                            "mode": mode,
                            "batch": bs,
                            "ours_img_s": bs / t["ours"]["median"],
                            "timm_img_s": bs / t["timm"]["median"],
                            "ours_min_s": t["ours"]["min"],
                            "timm_min_s": t["timm"]["min"],
                            "speed_ratio": t["timm"]["median"] / t["ours"]["median"],
                            "ours_peak_mb": mem["ours"],
                            "timm_peak_mb": mem["timm"],
                        }
                    )
                    _print_row(rows[-1])
    return rows


def _step_fn(model, opt, x, y, device, bf16: bool) -> Callable[[], object]:
    if opt is None:

        def infer() -> object:
            model.eval()
            with torch.no_grad(), _autocast(device, bf16):
                return model(x)

        return infer

    def train() -> object:
        model.train()
        with _autocast(device, bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return train


def hook_rollout_fn(model: TimmViT, x: torch.Tensor) -> Callable[[], object]:
    """The field's way (vit-explain): fused attention off, forward hooks on attn_drop, full-matrix rollout."""
    maps: list[torch.Tensor] = []
    for blk in model.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(o.detach()))

    def run() -> object:
        maps.clear()
        with torch.no_grad():
            out = model(x)
            result = torch.eye(maps[0].shape[-1]).expand(x.shape[0], -1, -1)
            for a in maps:
                a = a.mean(dim=1)
                a = 0.5 * a + 0.5 * torch.eye(a.shape[-1])
                a = a / a.sum(dim=-1, keepdim=True)
                result = a @ result
        return out, result[:, 0, 1:]

    return run


# (mode, tokens, batch, heads, head_dim): CIFAR recipe (33 tokens with half the patches dropped, 65 without),
# 224/16 ViT-Ti (197 tokens); the cases explicit_attention_faster decides between
ATTENTION_CASES = (
    ("train", 33, 128, 4, 32), ("train", 65, 128, 4, 32), ("train", 197, 16, 3, 64),
    ("infer", 33, 64, 4, 32), ("infer", 65, 64, 4, 32), ("infer", 197, 8, 3, 64),
)  # fmt: skip


def _attention_fn(
    path: str, packed: torch.Tensor, heads: int, train: bool, bf16: bool, device: torch.device
) -> Callable:
    """One attention call (forward, and backward in training) by SDPA or by the explicit softmax(q k^T / sqrt(d)) v,
    laid out as in `Attention.forward`: q, k, v are strided views of one (B, N, 3 D) qkv output, and the result is
    put back to (B, N, D)."""
    B, N, three_d = packed.shape
    hd = three_d // (3 * heads)
    scale = hd**-0.5

    def call() -> object:
        with _autocast(device, bf16), torch.set_grad_enabled(train):
            q, k, v = packed.reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, hd)
            if path == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v)
            else:
                out = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
            out = out.transpose(1, 2).reshape(B, N, heads * hd)  # (B, N, D)
        if train:
            out.float().sum().backward()
        return out

    return call


def attention_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """SDPA against the explicit path, on the same qkv projection output: the choice Attention makes per case."""
    rows = []
    for precision in ("fp32", "bf16"):
        for mode, tokens, batch, heads, hd in ATTENTION_CASES:
            g = torch.Generator().manual_seed(0)
            train = mode == "train"
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # the qkv Linear's output dtype
            packed = torch.randn(batch, tokens, 3 * heads * hd, generator=g).to(device, dtype).requires_grad_(train)
            fns = {p: _attention_fn(p, packed, heads, train, precision == "bf16", device) for p in ("sdpa", "explicit")}
            t = interleaved(fns, 2 * args.rounds, 5 * args.iters, device)
            rows.append(
                {
                    "section": "attention",
                    "precision": precision,
                    "mode": mode,
                    "tokens": tokens,
                    "batch": batch,
                    "heads": f"{heads}x{hd}",
                    "sdpa_ms": 1000 * t["sdpa"]["median"],
                    "explicit_ms": 1000 * t["explicit"]["median"],
                    "sdpa_over_explicit": t["sdpa"]["median"] / t["explicit"]["median"],
                }
            )
            _print_row(rows[-1])
    return rows


# Whole models in inference, one attention path forced against the other: (name, model arguments, 224 px or not)
ATTENTION_MODELS = (
    ("128x6 avg-pool (cifar10_cpu)", dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4,
                                          mlp_ratio=2.0, class_token=False, global_pool="avg"), False),
    ("ViT-Ti 32/4", dict(**SIZES["ViT-Ti"], **RESOLUTIONS["32/4"]), False),
    ("ViT-Ti 224/16", dict(**SIZES["ViT-Ti"], **RESOLUTIONS["224/16"]), True),
)  # fmt: skip


def _forced_path_fn(model: VisionTransformer, x: torch.Tensor, path: str, bf16: bool, device: torch.device) -> Callable:
    """A no-grad forward with every block on one attention path, whatever explicit_attention_faster would pick."""

    def call() -> object:
        model.set_fused_attn(path == "sdpa")
        try:
            with torch.no_grad(), _autocast(device, bf16):
                return model(x)
        finally:
            model.set_fused_attn(None)

    return call


def attention_model_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """The same choice in whole models (the qkv projection, the strided q, k, v, the MLP around them): inference."""
    rows = []
    for name, kw, big in ATTENTION_MODELS:
        torch.manual_seed(0)
        model = VisionTransformer(**kw).to(device).eval()
        batch = args.batch_224 if big else args.batch_cifar
        x = torch.randn(batch, 3, kw["img_size"], kw["img_size"], device=device)
        tokens = (kw["img_size"] // kw["patch_size"]) ** 2 + int(kw.get("class_token", True))
        for precision in ("fp32", "bf16"):
            bf16 = precision == "bf16"
            fns = {p: _forced_path_fn(model, x, p, bf16, device) for p in ("sdpa", "explicit")}
            t = interleaved(fns, args.rounds, args.iters, device)
            with _autocast(device, bf16):
                rule = vit_model.explicit_attention_faster(torch.zeros(1, tokens, 1, device=device), False)
            rows.append(
                {
                    "section": "attention_model",
                    "model": name,
                    "tokens": tokens,
                    "precision": precision,
                    "batch": batch,
                    "sdpa_ms": 1000 * t["sdpa"]["median"],
                    "explicit_ms": 1000 * t["explicit"]["median"],
                    "sdpa_over_explicit": t["sdpa"]["median"] / t["explicit"]["median"],
                    "rule": "explicit" if rule else "SDPA",
                }
            )
            _print_row(rows[-1])
    return rows


def explain_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    kw = dict(**SIZES["ViT-Ti"], **RESOLUTIONS["224/16"])
    torch.manual_seed(0)
    ours = VisionTransformer(**kw).to(device).eval()
    hooked = TimmViT(**kw).to(device).eval()
    hooked.load_state_dict(ours.state_dict())
    x = torch.randn(args.explain_batch, 3, 224, 224, device=device)

    def plain() -> object:
        with torch.no_grad():
            return ours(x)

    def explained() -> object:
        with torch.no_grad():
            logits, attns = ours.forward_with_attention(x, head_fusion="mean")
            return logits, attention_rollout(attns)

    fns = {"plain fused forward": plain, "ours: maps + rollout": explained, "hooks (timm, unfused)": None}
    fns["hooks (timm, unfused)"] = hook_rollout_fn(hooked, x.cpu() if device.type == "cpu" else x)
    t = interleaved(fns, args.rounds, args.iters, device)
    base = t["plain fused forward"]["median"]
    rows = []
    for name in fns:
        rows.append(
            {
                "section": "explain",
                "what": name,
                "batch": args.explain_batch,
                "median_ms": 1000 * t[name]["median"],
                "min_ms": 1000 * t[name]["min"],
                "x_plain": t[name]["median"] / base,
                "peak_mb": measure_peak_mb(fns[name], device),
            }
        )
        _print_row(rows[-1])
    return rows


def pipeline_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Images/s the DataModule delivers vs images/s the config's model trains at, per shipped config."""
    import yaml

    from vit_app.cli import build_cli

    rows = []
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    roots = {"cifar10": "cifar10", "cifar100": "cifar100", "imagefolder": "imagenette-mini"}
    for cfg in configs:
        kind = yaml.safe_load(cfg.read_text())["data"]["dataset"]
        extra: list[str] = []
        if kind in roots:
            if args.data_root is None:
                continue
            root = Path(args.data_root) / roots[kind]
            if not root.exists():
                print(f"  ({cfg.name}: no {root}, skipped)")
                continue
            extra = ["--data.root", str(root)]
        if kind == "synthetic" and args.quick:  # rendering 40k images is not what is measured; the rate is per batch
            extra += ["--data.synthetic_train_size", "4096"]
        extra += ["--model.pretrained", "null"]  # the architecture is what counts here; no hub download
        cli = build_cli(["--config", str(cfg), *extra, "--trainer.logger", "false"], run=False)
        dm, module = cli.datamodule, cli.model
        dm.setup("fit")
        loader = dm.train_dataloader()
        n_batches = args.pipeline_batches

        def batches(loader=loader):  # as many epochs as it takes (imagenette-mini has 7 batches an epoch)
            epoch = 0
            while True:
                if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
                    loader.sampler.set_epoch(epoch)
                yield from loader
                epoch += 1

        it = batches()
        next(it)  # start workers / warm caches
        t = time.perf_counter()
        seen = 0
        for _ in range(n_batches):
            x, _ = next(it)
            seen += x.shape[0]
        data_rate = seen / (time.perf_counter() - t)
        it.close()
        precision = (yaml.safe_load(cfg.read_text()).get("trainer") or {}).get("precision")
        if precision is None:  # what fit picks on this machine
            from vit_app.precision import choose_precision

            precision = choose_precision(device.type)[0]
        bs = min(dm.batch_size, args.pipeline_model_batch)  # img/s barely depends on the batch at these sizes
        xb = torch.randn(bs, 3, dm.img_size, dm.img_size, device=device)
        yb = torch.randint(0, dm.num_classes, (bs,), device=device)
        model = module.model.to(device)
        opt = module.build_optimizer()  # the config's own (Muon's step costs ~10 % on 2 CPU cores)
        step = _step_fn(model, opt, xb, yb, device, precision.startswith("bf16"))
        tm = interleaved({"model": step}, max(1, args.rounds // 2), 1, device)
        model_rate = bs / tm["model"]["median"]
        rows.append(
            {
                "section": "pipeline",
                "config": cfg.name,
                "loader": dm.loader,
                "workers": dm.num_workers,
                "data_img_s": data_rate,
                "model_img_s": model_rate,
                "precision": precision,
                "data_over_model": data_rate / model_rate,
            }
        )
        _print_row(rows[-1])
    return rows


def slowdown_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """A training run in miniature: the CIFAR recipe's model and optimiser (Muon, patch drop) for many steps, timed
    in blocks, each block next to a fixed 512 x 512 matmul. A run that slows while the matmul does not (the
    late / early ratio of step_over_reference > 1) slows for a reason of its own: state that grows, denormals."""
    from vit_app.optim import build_optimizer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=4, num_classes=10, embed_dim=128, depth=6, num_heads=4,
                              mlp_ratio=2.0, patch_drop_rate=0.5).to(device).train()  # fmt: skip
    opt = build_optimizer(model, "muon", lr=2e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (128,), generator=g).to(device)
    ref = torch.randn(512, 512, generator=g).to(device)
    block = 20 if args.quick else 100
    blocks = 6 if args.quick else 12

    def step() -> None:
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def timed(fn: Callable[[], object], n: int) -> float:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return 1000 * statistics.median(times)

    rows = []
    for b in range(blocks):
        step_ms = timed(step, block)
        ref_ms = timed(lambda: (ref @ ref).sum().item(), 20)
        rows.append({"section": "slowdown", "block": b, "steps": (b + 1) * block, "step_ms": step_ms,
                     "reference_ms": ref_ms, "step_over_reference": step_ms / ref_ms})  # fmt: skip
        _print_row(rows[-1])
    early = statistics.median(r["step_over_reference"] for r in rows[:2])
    late = statistics.median(r["step_over_reference"] for r in rows[-2:])
    rows.append({"section": "slowdown", "block": "late / early", "steps": blocks * block, "step_ms": float("nan"),
                 "reference_ms": float("nan"), "step_over_reference": late / early})  # fmt: skip
    return rows


def serve_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Requests per second of `vit-app serve` with batching (--max-batch-size 16) and one request at a time (1),
    the same concurrent load (64 clients) on a quickstart-sized model, the two servers measured in turn, rounds
    interleaved."""
    import io
    import signal
    import socket
    import subprocess
    import tempfile
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from vit_app.card import ModelCard, Provenance, save_safetensors
    from vit_app.data.synthetic import render_sample
    from vit_app.data.transforms import InputSpec
    from vit_app.model import ViTConfig

    tmp = Path(tempfile.mkdtemp())
    cfg = ViTConfig(img_size=32, patch_size=8, num_classes=6, embed_dim=128, depth=4, num_heads=4)
    ckpt = tmp / "model.safetensors"
    card = ModelCard(cfg, [f"c{i}" for i in range(6)], InputSpec.create(32), provenance=Provenance())
    save_safetensors(VisionTransformer(cfg).state_dict(), card, ckpt)
    bodies = []
    for i in range(8):
        buf = io.BytesIO()
        Image.fromarray(render_sample(0, i, 96)[0]).save(buf, "PNG")
        bodies.append(buf.getvalue())
    vit_app = str(Path(sys.executable).parent / "vit-app")

    def start(batch: int) -> tuple[subprocess.Popen, str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [vit_app, "--quiet", "serve", "--ckpt", str(ckpt), "--port", str(port), "--device", "cpu",
               "--max-batch-size", str(batch)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                    return proc, url
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("server did not start")

    def post(url: str, body: bytes) -> int:
        req = urllib.request.Request(url + "/predict", data=body, method="POST", headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status

    n = 64 if args.quick else 256
    servers = {b: start(b) for b in (16, 1)}
    rates: dict[int, list[float]] = {16: [], 1: []}
    try:
        with ThreadPoolExecutor(64) as pool:
            for _, url in servers.values():  # warm-up
                list(pool.map(lambda i, url=url: post(url, bodies[i % 8]), range(16)))
            for r in range(max(2, args.rounds // 2)):
                for b in (16, 1) if r % 2 == 0 else (1, 16):
                    url = servers[b][1]
                    t = time.perf_counter()
                    codes = list(pool.map(lambda i, url=url: post(url, bodies[i % 8]), range(n)))
                    assert codes == [200] * n
                    rates[b].append(n / (time.perf_counter() - t))
    finally:
        for proc, _ in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)
    batched, single = statistics.median(rates[16]), statistics.median(rates[1])
    row = {"section": "serve", "requests": n, "clients": 64, "batched_req_s": batched, "single_req_s": single,
           "ratio": batched / single}  # fmt: skip
    _print_row(row)
    return [row]


def _print_row(r: dict) -> None:
    cells = []
    for k, v in r.items():
        if k == "section":
            continue
        cells.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    print("  " + "  ".join(cells), flush=True)


# Per section: the table's title (formatted with the first row) and its columns as (header, row key, format).
TABLES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "model": (
        "Our ViT vs timm (same arguments, same weights; ratio = timm time / our time, >= 1.0 is the target)",
        [("model", "model", ""), ("res", "res", ""), ("precision", "precision", ""), ("mode", "mode", ""),
         ("batch", "batch", ""), ("ours img/s", "ours_img_s", ".0f"), ("timm img/s", "timm_img_s", ".0f"),
         ("ratio", "speed_ratio", ".2f"), ("ours MiB", "ours_peak_mb", ".0f"), ("timm MiB", "timm_peak_mb", ".0f")],
    ),
    "attention": (
        "Attention path (SDPA time / explicit softmax time: > 1 means the explicit path is faster)",
        [("precision", "precision", ""), ("mode", "mode", ""), ("tokens", "tokens", ""), ("batch", "batch", ""),
         ("heads x dim", "heads", ""), ("SDPA ms", "sdpa_ms", ".2f"), ("explicit ms", "explicit_ms", ".2f"),
         ("SDPA / explicit", "sdpa_over_explicit", ".2f")],
    ),
    "attention_model": (
        "Attention path in whole models, inference (one path forced; SDPA / explicit > 1: explicit is faster)",
        [("model", "model", ""), ("tokens", "tokens", ""), ("precision", "precision", ""), ("batch", "batch", ""),
         ("SDPA ms", "sdpa_ms", ".1f"), ("explicit ms", "explicit_ms", ".1f"),
         ("SDPA / explicit", "sdpa_over_explicit", ".2f"), ("rule's path", "rule", "")],
    ),
    "explain": (
        "Cost of explaining (ViT-Ti/16, 224 px, batch {batch}, fp32; target <= 1.15x plain)",
        [("what", "what", ""), ("median ms", "median_ms", ".1f"), ("min ms", "min_ms", ".1f"),
         ("x plain forward", "x_plain", ".2f"), ("peak MiB", "peak_mb", ".0f")],
    ),
    "pipeline": (
        "Input pipeline vs model (training, per shipped config; target: data >= 3x model)",
        [("config", "config", ""), ("loader", "loader", ""), ("workers", "workers", ""),
         ("data img/s", "data_img_s", ".0f"), ("model img/s", "model_img_s", ".0f"), ("precision", "precision", ""),
         ("data / model", "data_over_model", ".1f")],
    ),
    "slowdown": (
        "Slowdown over a run (CIFAR recipe steps, timed in blocks beside a fixed matmul; target ~1.0)",
        [("block", "block", ""), ("steps", "steps", ""), ("step ms", "step_ms", ".1f"),
         ("reference ms", "reference_ms", ".2f"), ("step / reference", "step_over_reference", ".2f")],
    ),
    "serve": (
        "vit-app serve: requests/s, 64 concurrent clients (batching vs one request at a time)",
        [("requests", "requests", ""), ("batched (max 16) req/s", "batched_req_s", ".0f"),
         ("one at a time req/s", "single_req_s", ".0f"), ("ratio", "ratio", ".2f")],
    ),
}  # fmt: skip


def _cell(value: object, fmt: str) -> str:
    if isinstance(value, float) and value != value:  # NaN: not measured in this block
        return ""
    return format(value, fmt)


def print_tables(rows: list[dict]) -> None:
    """One markdown table per section that has rows, in TABLES' order."""
    for section, (title, columns) in TABLES.items():
        part = [r for r in rows if r["section"] == section]
        if not part:
            continue
        print("\n## " + title.format(**part[0]))
        print("| " + " | ".join(h for h, _, _ in columns) + " |")
        print("|" + "---|" * len(columns))
        for r in part:
            print("| " + " | ".join(_cell(r[k], f) for _, k, f in columns) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and iterations (< 3 minutes on 2 CPU cores)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 4 quick, 8 full)")
    p.add_argument("--iters", type=int, default=None, help="calls per round (default 1 quick, 3 full)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-cifar", type=int, default=64)
    p.add_argument("--batch-224", type=int, default=8)
    p.add_argument("--explain-batch", type=int, default=8)
    p.add_argument("--pipeline-batches", type=int, default=None)
    p.add_argument("--pipeline-model-batch", type=int, default=32, help="batch for the model side of pipeline rows")
    p.add_argument("--data-root", default=None, help="folder with cifar10/ and imagenette-mini/ for the pipeline rows")
    sections = ["model", "attention", "explain", "pipeline", "slowdown", "serve"]
    p.add_argument("--only", nargs="+", choices=sections, default=None)
    p.add_argument("--json", default="benchmark.json", help="where to write all rows")
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "bf16"),
        default=["fp32", "bf16"],
        help="precisions of the model rows (bf16 is emulated, and slow, on a CPU without AVX512-BF16 or AMX)",
    )
    args = p.parse_args()
    args.rounds = args.rounds or (4 if args.quick else 8)
    args.iters = args.iters or (1 if args.quick else 3)
    args.pipeline_batches = args.pipeline_batches or (4 if args.quick else 30)
    if args.quick:  # smaller batches, more rounds: the medians are steadier on a noisy machine
        args.batch_224 = min(args.batch_224, 4)
        args.batch_cifar = min(args.batch_cifar, 32)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_description()
    print(f"device: {device} ({name}); torch {torch.__version__}; threads: {threads}; rounds: {args.rounds}")
    sections = args.only or sections
    rows: list[dict] = []
    t0 = time.time()
    sections_fns = (("model", model_rows), ("attention", attention_rows), ("explain", explain_rows),
                    ("pipeline", pipeline_rows), ("slowdown", slowdown_rows), ("serve", serve_rows))  # fmt: skip
    for section, fn in sections_fns:
        if section in sections:
            t = time.time()
            rows += fn(args, device)
            if section == "attention":
                rows += attention_model_rows(args, device)
            print(f"  ({section}: {time.time() - t:.0f} s)", flush=True)
    print_tables(rows)
    meta = {"device": str(device), "name": name, "threads": threads, "rounds": args.rounds, "seconds": time.time() - t0}
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\n{time.time() - t0:.0f} s; rows written to {args.json}")


if __name__ == "__main__":
    main()
