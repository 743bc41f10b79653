"""Will a training step fit in memory? A count of what one step keeps for the backward pass, set against the memory
free on the device before training starts, so that a configuration that cannot fit (say patch 4 on 224 px images:
3,136 tokens, and attention that grows with their square) stops at once with the keys to change, instead of being
killed by the operating system minutes later with no message.

Two counts: a lower one (kept values at the precision's width, attention matrices only where the attention path
materialises them) refuses a run when it alone is over the free memory; an upper one (every kept value in fp32,
attention matrices always) warns when it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch

from vit_app.errors import ConfigError


class StepShape(NamedTuple):
    """What sets a training step's memory: images a batch, tokens an image, and the model's dimensions."""

    batch: int
    tokens: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float


def train_activation_bytes(step: StepShape, bytes_per: int = 4, attention_kept: bool = True) -> int:
    """Bytes a training step keeps for the backward pass. Per block and token: the two norms' outputs, q, k, v, the
    attention output and its projection, the residual (8 x D), the MLP's hidden values before and after the GELU
    (2 x mlp_ratio x D) and the MLP output (D); with `attention_kept` (an explicit softmax, not a fused kernel) also
    the attention scores and probabilities (2 x heads x tokens)."""
    b, n, d, depth, heads, mlp = step
    per_token = (9 + 2 * mlp) * d + (2 * heads * n if attention_kept else 0)
    return int(depth * b * n * per_token * bytes_per)


def _cgroup_free() -> int | None:
    """Memory left under a cgroup v2 limit (a container's), or None where there is none."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    return None if limit == "max" else max(int(limit) - int(used), 0)


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: the GPU's free memory for CUDA; for the CPU, the system's available memory (Linux
    MemAvailable, or free pages elsewhere) and a container's limit, whichever is less; None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)  # "MemAvailable:   123456 kB"
    except OSError:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    cgroup = _cgroup_free()
    if cgroup is not None:
        found.append(cgroup)
    return min(found) if found else None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_train_memory(
    step: StepShape,
    free: int | None,
    shape: str,
    half: bool = False,
    attention_kept: bool = True,
) -> str | None:
    """ConfigError when the lower count of a training step (`half`: 2 bytes a value, as under bf16/fp16 autocast;
    `attention_kept`: the attention path keeps its matrices) is over the `free` bytes; a warning (returned) when the
    upper count is; None when both fit or the free memory is unknown. `shape` describes the tokens for the message
    (e.g. "patch 4 on 224x224 px: 3,136 tokens")."""
    if free is None:
        return None
    low = train_activation_bytes(step, bytes_per=2 if half else 4, attention_kept=attention_kept)
    high = train_activation_bytes(step, bytes_per=4, attention_kept=True)
    if high <= free:
        return None
    what = f"a training step at data.batch_size {step.batch} ({shape}, {step.depth} blocks x {step.embed_dim} wide)"
    fix = "use a larger model.patch_size, a smaller data.img_size or a smaller data.batch_size"
    if low > free:
        raise ConfigError(
            f"out of memory ahead: {what} keeps at least {_gib(low)} for the backward pass, and {_gib(free)} is "
            f"free; {fix}"
        )
    return (
        f"memory may run out: {what} keeps up to {_gib(high)} for the backward pass, and {_gib(free)} is free; if "
        f"it does, {fix}"
    )
