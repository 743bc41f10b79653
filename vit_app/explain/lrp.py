"""Attention-aware LRP (AttnLRP, Achtibat et al. 2024) for our VisionTransformer, as gradient x input.

The forward pass below computes exactly the model's outputs; only three gradients differ from autograd's (the
Gradient*Input form of Arras et al. 2025): LayerNorm's division by its standard deviation is held constant and
GELU passes relevance in proportion to its output (the identity rule on both), and the bilinear products inside
attention share relevance uniformly (q's and k's gradients divided by 4, v's by 2). The softmax's own gradient then
is AttnLRP's softmax rule. With `cp=True`, relevance does not pass through the attention weights at all (q and k
held constant, so attention is linear in v: CP-LRP, Ali et al. 2022). A patch token's relevance is the sum over
its channels of token x gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_app.model import Attention, Block, VisionTransformer


class _ProportionalGelu(torch.autograd.Function):
    """GELU whose gradient is gelu(x) / x: relevance passes in proportion (the identity rule)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        y = F.gelu(x)
        small = x.abs() < 1e-6
        ctx.save_for_backward(torch.where(small, torch.full_like(x, 0.5), y / torch.where(small, 1.0, x)))
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (ratio,) = ctx.saved_tensors
        return grad * ratio


class _DivideGrad(torch.autograd.Function):
    """The identity forward, its gradient divided by `factor` (the uniform rule on a product's operand)."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad / ctx.factor, None


def _layer_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """LayerNorm with its standard deviation held constant in the backward pass (Identity modules pass)."""
    if not isinstance(norm, nn.LayerNorm):
        return norm(x)
    mean = x.mean(dim=-1, keepdim=True)
    std = ((x - mean).pow(2).mean(dim=-1, keepdim=True) + norm.eps).sqrt()
    return (x - mean) / std.detach() * norm.weight + norm.bias


def _attention(attn: Attention, x: Tensor, cp: bool, d2: Tensor | None) -> Tensor:
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
    q, k, v = qkv.unbind(0)
    if cp:  # the attention weights are constants: attention is linear in v
        q, k = q.detach(), k.detach()
    else:  # uniform rule on the two bilinear products q k^T and A v
        q, k, v = _DivideGrad.apply(q, 4.0), _DivideGrad.apply(k, 4.0), _DivideGrad.apply(v, 2.0)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
    bias = attn.bias(d2)  # the locality bias (attn_locality): a constant, as a linear layer's bias is
    weights = (logits if bias is None else logits + bias).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B, N, C)  # (B, N, D)
    return attn.proj(out)


def _block(blk: Block, x: Tensor, cp: bool, d2: Tensor | None) -> Tensor:
    x = x + _attention(blk.attn, _layer_norm(blk.norm1, x), cp, d2)
    mlp = blk.mlp
    return x + mlp.fc2(_ProportionalGelu.apply(mlp.fc1(_layer_norm(blk.norm2, x))))


def relevance_forward(model: VisionTransformer, x: Tensor, cp: bool = False) -> tuple[Tensor, Tensor]:
    """(input tokens (B, P + N, D) as a leaf that requires grad, logits (B, C)), the logits equal to model(x) in eval
    mode, the gradient from them to the tokens AttnLRP's."""
    tokens, d2 = model.tokens_and_distances(x)
    tokens = tokens.detach().requires_grad_(True)
    h = tokens
    for blk in model.blocks:
        h = _block(blk, h, cp, d2)
    h = _layer_norm(model.norm, h)
    pooled = h[:, 0] if model.global_pool == "token" else h[:, model.num_prefix_tokens :].mean(dim=1)
    return tokens, model.head(_layer_norm(model.fc_norm, pooled))


def lrp_maps(model: VisionTransformer, x: Tensor, target: Tensor, cp: bool = False) -> tuple[Tensor, Tensor]:
    """(relevance of each patch for class `target` (B, grid_h, grid_w), logits (B, C)) for a normalised batch."""
    with torch.enable_grad():
        tokens, logits = relevance_forward(model, x, cp)
        (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), tokens)
    P = model.num_prefix_tokens
    relevance = (tokens * grad).sum(dim=-1)[:, P:]  # (B, N)
    grid = (x.shape[-2] // model.patch_embed.patch_size[0], x.shape[-1] // model.patch_embed.patch_size[1])
    return relevance.detach().reshape(x.shape[0], *grid), logits.detach()
