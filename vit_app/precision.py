"""Choose the training precision for the hardware at hand, unless the config names one.

A capability rule, so the same command on the same machine always trains in the same precision (a timing probe
flipped from run to run): GPUs take bf16 where they have it, else fp16 with loss scaling; CPUs take bf16 autocast
where it was measured to train faster than fp32 (AMX; AVX512-BF16 on AMD), else fp32 (AVX512-BF16 alone on Intel,
and every CPU whose bf16 is emulated).
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def _first_processor(cpuinfo: str | Path) -> dict[str, str] | None:
    """The first processor's fields in /proc/cpuinfo (the cores of one VM are alike); None where it is missing."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU as figures should name it, e.g. "AMD EPYC (family 25 model 17; avx512_bf16)": a VM's model name alone
    ("AMD EPYC") does not tell a Zen 3 from a Zen 5. Falls back to the machine type where /proc/cpuinfo is missing."""

    fields = _first_processor(cpuinfo)
    if fields is None:
        return platform.processor() or platform.machine()
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    detail = []
    if "cpu family" in fields and "model" in fields:
        detail.append(f"family {fields['cpu family']} model {fields['model']}")
    detail.append(", ".join(bf16) if bf16 else "no native bf16")
    return f"{name} ({'; '.join(detail)})"


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles (Intel Xeon, Sapphire Rapids and later)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: no probe, assume not
        return False


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        avx512_bf16 = bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch: no probe, assume not
        avx512_bf16 = False
    return avx512_bf16 or cpu_has_amx()


def cpu_vendor(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The first processor's vendor_id ("GenuineIntel", "AuthenticAMD", ...); "" where /proc/cpuinfo has none."""
    return (_first_processor(cpuinfo) or {}).get("vendor_id", "")


def cpu_bf16_training_pays() -> bool:
    """Whether bf16 autocast trains faster than fp32 on this CPU, by the cases measured (README, "Performance"):
    with AMX (Intel Xeon, family 6 model 167: ViT-Ti 32/4 training 2.3x fp32's images a second) and with AVX512-BF16
    on AMD (Zen 4: 1.86x), yes; with AVX512-BF16 but no AMX on Intel (a Xeon, family 6 model 207, whose VM does not
    expose AMX: the cifar10_cpu step took 1.33-1.43x longer in bf16, its matmuls run no faster than fp32's), no;
    where bf16 is emulated (no AVX512-BF16, no AMX), no."""
    if cpu_has_amx():
        return True
    return cpu_supports_bf16() and cpu_vendor() != "GenuineIntel"


def choose_precision(accelerator: str | None) -> tuple[str, str]:
    """(Lightning precision, reason) for `accelerator` ("auto", "cpu", "gpu", "cuda")."""
    acc = str(accelerator or "auto").lower()
    if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"GPU {name} supports bf16"
        return "16-mixed", f"GPU {name} has no bf16: fp16 with loss scaling"
    if cpu_bf16_training_pays():
        return "bf16-mixed", "CPU with AMX, or AMD with AVX512-BF16: bf16 autocast"
    if cpu_supports_bf16():
        return "32-true", "Intel CPU with AVX512-BF16 but no AMX: fp32 (bf16 trained slower on such a CPU)"
    return "32-true", "CPU without native bf16: fp32"
