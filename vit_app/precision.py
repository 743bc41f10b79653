"""Choose the training precision for the hardware at hand, unless the config names one.

A capability rule, so the same command on the same machine always trains in the same precision (a timing probe
flipped from run to run): GPUs take bf16 where they have it, else fp16 with loss scaling; CPUs take bf16 autocast
where they have native bf16 arithmetic (AVX512-BF16 or AMX), else fp32.
"""

from __future__ import annotations

import torch


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: no probe, assume not
        return False


def choose_precision(accelerator: str | None) -> tuple[str, str]:
    """(Lightning precision, reason) for `accelerator` ("auto", "cpu", "gpu", "cuda")."""
    acc = str(accelerator or "auto").lower()
    if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"GPU {name} supports bf16"
        return "16-mixed", f"GPU {name} has no bf16: fp16 with loss scaling"
    if cpu_supports_bf16():
        return "bf16-mixed", "CPU with native bf16 (AVX512-BF16 or AMX): bf16 autocast"
    return "32-true", "CPU without native bf16: fp32"
