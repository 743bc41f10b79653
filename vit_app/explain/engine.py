"""Run the model and turn what it returns into explanations (the explain code that knows the model).

Methods (see METHODS):
    mean-attention  the read-out's attention (the class token's row, or the mean patch row without one), heads
                averaged, averaged over every block but the first
    rollout     attention rollout (Abnar & Zuidema 2020): the read-out's attention, layer through layer
    attention   one layer's raw attention from the read-out (--layer)
    relevance   class-specific: gradient-weighted attention relevance through the residual stream (Chefer et al. 2021)
    attnlrp     class-specific: attention-aware LRP (Achtibat et al. 2024), gradient x input with AttnLRP's rules
    cp-lrp      class-specific: LRP with the attention weights held constant (Ali et al. 2022)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from vit_app.explain.lrp import lrp_maps
from vit_app.explain.rollout import (
    HeadFusion,
    attention_rollout,
    fuse_heads,
    head_maps,
    layer_rollouts,
    relevance_rollout,
)
from vit_app.model import VisionTransformer

Method = Literal["mean-attention", "rollout", "attention", "relevance", "attnlrp", "cp-lrp"]
METHODS: tuple[str, ...] = ("mean-attention", "rollout", "attention", "relevance", "attnlrp", "cp-lrp")
CLASS_SPECIFIC = frozenset({"relevance", "attnlrp", "cp-lrp"})
ALIASES = {"grad-rollout": "relevance"}  # the name of the class-specific method before "relevance" replaced it
DEFAULT_METHOD: Method = "mean-attention"  # measured best: README, "How right is a map?"
CLASS_METHOD: Method = "attnlrp"  # the class-specific method measured best on the two-object split (same section)


def averaged_blocks(depth: int) -> range:
    """The blocks mean-attention averages: all but the first, whose attention is mostly positional (a one-block
    model: that block). Averaging keeps a block whose class token reads a few background tokens (where a ViT
    keeps global state) from deciding the map alone."""
    return range(1, depth) if depth >= 2 else range(depth)


@dataclass
class Explanation:
    """Maps for a batch: `maps` (B, gh, gw) for the method; `probs` (B, C); `target` (B,) the explained class."""

    maps: Tensor
    probs: Tensor
    target: Tensor
    layers: list[Tensor] | None = None  # per-layer rollouts, each (B, gh, gw)
    heads: Tensor | None = None  # one layer's per-head maps (B, heads, gh, gw)


def resolve_method(method: str) -> Method:
    method = ALIASES.get(method, method)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method  # type: ignore[return-value]


def explain(
    model: VisionTransformer,
    x: Tensor,
    method: str = DEFAULT_METHOD,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    layer: int = -1,
    target: Tensor | int | None = None,
    with_layers: bool = False,
    with_heads: bool = False,
    temperature: float = 1.0,
) -> Explanation:
    """Explain a normalised batch x (B, C, H, W). `target` picks the class the class-specific methods explain
    (default: the predicted one)."""
    method = resolve_method(method)
    depth = len(model.blocks)
    if not -depth <= layer < depth:
        raise ValueError(
            f"layer {layer} does not exist: the model has {depth} blocks (0..{depth - 1}, or -1 for the last)"
        )
    P, cls = model.num_prefix_tokens, model.has_class_token
    ph, pw = model.patch_embed.patch_size
    grid = (x.shape[-2] // ph, x.shape[-1] // pw)
    needs_grad = method == "relevance"
    fuse_early = method in ("rollout", "mean-attention") and not with_heads  # they need only head-fused maps
    with torch.enable_grad() if needs_grad else torch.no_grad():
        logits, attns = model.forward_with_attention(x, head_fusion if fuse_early else None)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if target is None:
            tgt = probs.argmax(dim=-1)
        else:
            tgt = torch.as_tensor(target, device=x.device).expand(x.shape[0]).long()
        if method == "relevance":
            score = logits.gather(1, tgt[:, None]).sum()
            grads = torch.autograd.grad(score, attns)  # grads[i] is d score / d attns[i]: paired by construction
            maps = relevance_rollout([a.detach() for a in attns], grads, P, grid, cls)
        elif method == "rollout":
            maps = attention_rollout(attns, head_fusion, discard_ratio, P, grid, cls)
        elif method == "attention":
            maps = fuse_heads(head_maps(attns[layer], P, grid, cls), head_fusion)  # one layer's raw maps
        elif method == "mean-attention":
            blocks = [attns[i] for i in averaged_blocks(depth)]
            fused = [a if a.ndim == 3 else fuse_heads(a, head_fusion) for a in blocks]  # each (B, T, T)
            maps = torch.stack([head_maps(a[:, None], P, grid, cls)[:, 0] for a in fused]).mean(dim=0)  # (B, gh, gw)
    if method in ("attnlrp", "cp-lrp"):
        maps, _ = lrp_maps(model, x, tgt, cp=method == "cp-lrp")
    attns = [a.detach() for a in attns]
    return Explanation(
        maps=maps.detach(),
        probs=probs.detach(),
        target=tgt.detach(),
        layers=layer_rollouts(attns, head_fusion, discard_ratio, P, grid, cls) if with_layers else None,
        heads=head_maps(attns[layer], P, grid, cls) if with_heads else None,
    )
