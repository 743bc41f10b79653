"""Run the model and turn its returned attention maps into explanations (the explain code that knows the model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from vit_app.explain.rollout import (
    HeadFusion,
    attention_rollout,
    fuse_heads,
    grad_rollout,
    head_maps,
    layer_rollouts,
)
from vit_app.model import VisionTransformer

Method = Literal["rollout", "grad-rollout", "attention"]
METHODS: tuple[str, ...] = ("rollout", "grad-rollout", "attention")


@dataclass
class Explanation:
    """Maps for a batch: `maps` (B, gh, gw) for the method; `probs` (B, C); `target` (B,) the explained class."""

    maps: Tensor
    probs: Tensor
    target: Tensor
    layers: list[Tensor] | None = None  # per-layer rollouts, each (B, gh, gw)
    heads: Tensor | None = None  # one layer's per-head maps (B, heads, gh, gw)


def explain(
    model: VisionTransformer,
    x: Tensor,
    method: Method = "rollout",
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    layer: int = -1,
    target: Tensor | int | None = None,
    with_layers: bool = False,
    with_heads: bool = False,
    temperature: float = 1.0,
) -> Explanation:
    """Explain a normalised batch x (B, C, H, W). `target` picks the class for grad-rollout (default: predicted)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    depth = len(model.blocks)
    if not -depth <= layer < depth:
        raise ValueError(
            f"layer {layer} does not exist: the model has {depth} blocks (0..{depth - 1}, or -1 for the last)"
        )
    P = model.num_prefix_tokens
    ph, pw = model.patch_embed.patch_size
    grid = (x.shape[-2] // ph, x.shape[-1] // pw)
    fuse_early = method == "rollout" and not with_heads  # rollout alone needs only head-fused maps
    with torch.enable_grad() if method == "grad-rollout" else torch.no_grad():
        logits, attns = model.forward_with_attention(x, head_fusion if fuse_early else None)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if target is None:
            tgt = probs.argmax(dim=-1)
        else:
            tgt = torch.as_tensor(target, device=x.device).expand(x.shape[0]).long()
        if method == "grad-rollout":
            score = logits.gather(1, tgt[:, None]).sum()
            grads = torch.autograd.grad(score, attns)  # grads[i] is d score / d attns[i]: paired by construction
            maps = grad_rollout([a.detach() for a in attns], grads, discard_ratio, P, grid)
        elif method == "rollout":
            maps = attention_rollout(attns, head_fusion, discard_ratio, P, grid)
        else:
            maps = fuse_heads(head_maps(attns[layer], P, grid), head_fusion)  # one layer's raw maps, heads fused
    attns = [a.detach() for a in attns]
    return Explanation(
        maps=maps.detach(),
        probs=probs.detach(),
        target=tgt.detach(),
        layers=layer_rollouts(attns, head_fusion, discard_ratio, P, grid) if with_layers else None,
        heads=head_maps(attns[layer], P, grid) if with_heads else None,
    )
