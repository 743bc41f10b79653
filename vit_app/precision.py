"""Choose the training precision for the hardware at hand, unless the config names one."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: no probe, assume not
        return False


def time_train_step(model: nn.Module, x: torch.Tensor, bf16: bool) -> float:
    """Seconds for one forward + backward of `model` on `x` under CPU autocast (bf16) or fp32."""
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    out.float().square().mean().backward()
    return time.perf_counter() - t


def cpu_bf16_speedup(model: nn.Module, x: torch.Tensor, rounds: int = 3, step_budget_s: float = 0.4) -> float:
    """Median fp32 time / median bf16 time of a training step, measured interleaved on a copy of `model`, on as
    much of the batch `x` as fits a step of about `step_budget_s` (small batches understate bf16's gain)."""
    probe = copy.deepcopy(model).train()
    per_image = time_train_step(probe, x[:4], False) / 4  # first call: also warms up
    x = x[: int(min(len(x), max(4, step_budget_s / max(per_image, 1e-6))))]
    for bf16 in (False, True):  # warm-up both paths (the first call of each pays for kernel selection)
        time_train_step(probe, x, bf16)
    fp32, bf16 = [], []
    for _ in range(rounds):
        fp32.append(time_train_step(probe, x, False))
        bf16.append(time_train_step(probe, x, True))
    return sorted(fp32)[rounds // 2] / sorted(bf16)[rounds // 2]


def choose_precision(
    accelerator: str | None, model: nn.Module | None = None, example: torch.Tensor | None = None
) -> tuple[str, str]:
    """(Lightning precision, reason). GPUs: bf16-mixed where supported, else 16-mixed. CPUs with native bf16:
    bf16-mixed when a quick interleaved probe of `model` on `example` finds it >= 1.1x faster than fp32 (small
    ViTs are often faster in fp32); CPUs without native bf16: 32-true."""
    acc = str(accelerator or "auto").lower()
    if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"GPU {name} supports bf16"
        return "16-mixed", f"GPU {name} has no bf16: fp16 with loss scaling"
    if not cpu_supports_bf16():
        return "32-true", "CPU without native bf16: fp32"
    if model is None or example is None:
        return "bf16-mixed", "CPU has native bf16 (AVX512-BF16/AMX)"
    speedup = cpu_bf16_speedup(model, example)
    if speedup >= 1.1:
        return "bf16-mixed", f"CPU has native bf16 and bf16 autocast measured {speedup:.2f}x faster for this model"
    return "32-true", f"CPU has native bf16 but bf16 autocast measured {speedup:.2f}x fp32 speed for this model"
