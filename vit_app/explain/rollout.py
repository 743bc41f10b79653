"""Attention rollout and its relatives: pure functions on the attention maps (and their gradients) the model returns.

Nothing here knows about nn.Module (head fusion is the model's, re-exported here). Every function is batched
(each image gets its own discard) and runs on whatever device its inputs are on. Token order is [class token]
[registers] patches; `num_prefix_tokens` counts the first two, and `cls` says whether a class token is first (the
read-out is its row; without one, the mean of the patch rows). The default (None) assumes a class token whenever
there are prefix tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vit_app.model import HeadFusion, fuse_heads  # re-exported: the model fuses heads on the fly, rollout after


def discard_lowest(attn: Tensor, ratio: float, num_prefix_tokens: int) -> Tensor:
    """Zero the `ratio` lowest entries of each image's (T, T) map separately. Entries in a prefix (class) token's
    row or column are never dropped."""
    if ratio <= 0:
        return attn
    if not 0 <= ratio < 1:
        raise ValueError(f"discard_ratio must be in [0, 1), got {ratio}")
    B, T, _ = attn.shape
    P = num_prefix_tokens
    protected = torch.zeros(T, T, dtype=torch.bool, device=attn.device)
    protected[:P, :] = True
    protected[:, :P] = True
    k = int((T - P) * (T - P) * ratio)
    if k == 0:
        return attn
    candidates = attn.masked_fill(protected, math.inf).reshape(B, T * T)  # protected entries are never the lowest
    drop = candidates.topk(k, dim=1, largest=False).indices  # (B, k), per image
    return attn.reshape(B, T * T).scatter(1, drop, 0.0).reshape(B, T, T)


def _grid(num_patches: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None:
        if grid[0] * grid[1] != num_patches:
            raise ValueError(f"grid {grid} does not hold {num_patches} patch tokens")
        return grid
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patch tokens do not form a square grid; pass grid=(h, w)")
    return side, side


def _readout(B: int, T: int, P: int, cls: bool | None, like: Tensor) -> Tensor:
    """The read-out row vector (B, 1, T): the class token's, or the mean over the patch rows."""
    v = torch.zeros(B, 1, T, device=like.device, dtype=like.dtype)
    if cls if cls is not None else P > 0:
        v[:, 0, 0] = 1.0
    else:
        v[:, 0, P:] = 1.0 / (T - P)
    return v


def normalize_layer(fused: Tensor, discard_ratio: float, num_prefix_tokens: int) -> Tensor:
    """One layer's (B, T, T) map made ready for rollout: discard, 0.5 A + 0.5 I, rows renormalised to sum to 1."""
    a = discard_lowest(fused.float(), discard_ratio, num_prefix_tokens)
    a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    return a / a.sum(dim=-1, keepdim=True)


def rollout_layers(
    layers: Sequence[Tensor], num_prefix_tokens: int, grid: tuple[int, int] | None = None, cls: bool | None = None
) -> Tensor:
    """The read-out row of the product A_L ... A_1 of normalised layers (first layer first) -> (B, grid_h, grid_w).

    Only that row is needed, so it is carried from the last layer back as a vector: L vector-matrix products,
    O(L T^2), instead of the O(L T^3) of multiplying the full matrices; the result is the same product."""
    if not layers:
        raise ValueError("rollout needs at least one attention map")
    B, T, _ = layers[0].shape
    P = num_prefix_tokens
    gh, gw = _grid(T - P, grid)
    v = _readout(B, T, P, cls, layers[0])
    for a in reversed(layers):
        v = v @ a  # (B, 1, T)
    return v[:, 0, P:].reshape(B, gh, gw)


def _fused(attn: Tensor, head_fusion: HeadFusion) -> Tensor:
    """(B, heads, T, T) -> (B, T, T); maps already fused (B, T, T) pass through."""
    return attn if attn.ndim == 3 else fuse_heads(attn, head_fusion)


def attention_rollout(
    attentions: Sequence[Tensor],
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    cls: bool | None = None,
) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of per-layer maps (B, heads, T, T) or head-fused (B, T, T), first
    layer first.

    Fuse heads, drop the lowest `discard_ratio` of each image's attentions (never the class token's), take
    0.5 A + 0.5 I, renormalise rows, multiply from the first layer to the last, and read the class-token row (the
    mean of the patch rows without a class token). Returns (B, grid_h, grid_w).
    """
    if not attentions:
        raise ValueError("attention_rollout needs at least one attention map")
    layers = [normalize_layer(_fused(a, head_fusion), discard_ratio, num_prefix_tokens) for a in attentions]
    return rollout_layers(layers, num_prefix_tokens, grid, cls)


def relevance_rollout(
    attentions: Sequence[Tensor],
    gradients: Sequence[Tensor],
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    cls: bool | None = None,
) -> Tensor:
    """Class-specific relevance through the residual stream (Chefer et al. 2021, "Generic Attention-model
    Explainability"): R = I, then for each layer, first to last, R <- R + mean_h((dy/dA * A)^+) R, where A is the
    layer's attention (B, heads, T, T) and dy/dA the gradient of the class score with respect to that same map
    (gradients[i] belongs to attentions[i]). Returns the read-out row of R over the patches (B, grid_h, grid_w).

    As in rollout, the row is carried from the last layer back as a vector (O(L T^2))."""
    if len(attentions) != len(gradients):
        raise ValueError(f"{len(attentions)} attention maps but {len(gradients)} gradients")
    if not attentions:
        raise ValueError("relevance_rollout needs at least one attention map")
    B, _, T, _ = attentions[0].shape
    P = num_prefix_tokens
    gh, gw = _grid(T - P, grid)
    v = _readout(B, T, P, cls, attentions[0].float())
    for attn, grad in zip(reversed(attentions), reversed(gradients)):
        if attn.shape != grad.shape:
            raise ValueError(f"gradient shape {tuple(grad.shape)} does not match its attention {tuple(attn.shape)}")
        cam = (attn.float() * grad.float()).clamp_min(0.0).mean(dim=1)  # (B, T, T)
        v = v + v @ cam  # v (I + cam)
    return v[:, 0, P:].reshape(B, gh, gw)


def layer_rollouts(
    attentions: Sequence[Tensor],
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    cls: bool | None = None,
) -> list[Tensor]:
    """The rollout after each layer (the last one equals `attention_rollout`): a list of (B, grid_h, grid_w)."""
    layers = [normalize_layer(_fused(a, head_fusion), discard_ratio, num_prefix_tokens) for a in attentions]
    return [rollout_layers(layers[: i + 1], num_prefix_tokens, grid, cls) for i in range(len(layers))]


def head_maps(
    attention: Tensor, num_prefix_tokens: int = 1, grid: tuple[int, int] | None = None, cls: bool | None = None
) -> Tensor:
    """One layer's raw per-head maps (B, heads, T, T) -> (B, heads, grid_h, grid_w): the class token's attention
    to the patches, or the mean patch row without a class token."""
    B, H, T, _ = attention.shape
    P = num_prefix_tokens
    gh, gw = _grid(T - P, grid)
    if cls if cls is not None else P > 0:
        rows = attention[:, :, 0, P:]  # (B, H, N)
    else:
        rows = attention[:, :, P:, P:].mean(dim=2)  # (B, H, N)
    return rows.reshape(B, H, gh, gw)
