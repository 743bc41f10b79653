"""Our Vision Transformer: readable top to bottom, weight-compatible with timm's VisionTransformer.

PatchEmbed -> [class token] + learned position embedding -> `depth` pre-norm Blocks -> norm -> pool -> head.
Parameter names and shapes equal timm's for the same constructor arguments, so a timm state dict loads with
`strict=True`. Attention maps are *returned* by `forward_with_attention`, never captured by hooks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vit_app.precision import cpu_has_amx, cpu_supports_bf16, cpu_vendor

GlobalPool = Literal["token", "avg"]
PosEmbedInit = Literal["learn", "sincos"]
AttnInit = Literal["trunc_normal", "mimetic"]
# Settings of training and initialisation: they change no weight's shape and no output of given weights.
TRAINING_ONLY = frozenset({"drop_rate", "attn_drop_rate", "drop_path_rate", "patch_drop_rate", "pos_embed_init",
                           "attn_init"})  # fmt: skip
NOT_TIMM = frozenset({"pos_embed_init", "attn_init", "attn_locality"})  # ours alone: timm has no argument for them
TIMM_INEXPRESSIBLE = frozenset({"attn_locality"})  # ours alone and changing the outputs: timm cannot build the model


@dataclass(frozen=True)
class ViTConfig:
    """Everything that builds a VisionTransformer, under timm's argument names: timm's
    `VisionTransformer(**config.to_dict())` has the same parameter names and shapes."""

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    reg_tokens: int = 0  # register tokens (Darcet et al. 2024): extra learned tokens, read by nothing, that give the
    # network somewhere other than background patches to keep global state
    no_embed_class: bool = False  # position embeddings for the patches only (timm's register models use this)
    global_pool: GlobalPool = "token"
    fc_norm: bool | None = None  # None: timm's rule (norm after pooling for "avg")
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    patch_drop_rate: float = 0.0
    pos_embed_init: PosEmbedInit = "learn"  # "sincos": fixed 2-D sin-cos embeddings (Beyer et al. 2022), not trained
    attn_init: AttnInit = "trunc_normal"  # "mimetic": W_q W_k^T ~ aZ + bI, W_v W_o ~ aZ - bI (Trockman & Kolter 2023)
    attn_locality: bool = False  # a learned 2-D locality bias on each head's attention logits (see locality_slopes)

    def __post_init__(self) -> None:
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
        if isinstance(self.reg_tokens, bool) or not isinstance(self.reg_tokens, int) or self.reg_tokens < 0:
            raise ValueError(f"reg_tokens must be a whole number >= 0, got {self.reg_tokens!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be a whole number >= 0, got {self.num_classes!r}")
        size = _pair(self.img_size)
        if min(size) < 1 or size[0] % self.patch_size or size[1] % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a positive multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg' without one")
        if self.pos_embed_init not in ("learn", "sincos"):
            raise ValueError(f"pos_embed_init must be 'learn' or 'sincos', got {self.pos_embed_init!r}")
        if self.pos_embed_init == "sincos" and self.embed_dim % 4:
            raise ValueError(f"pos_embed_init='sincos' needs embed_dim divisible by 4, got {self.embed_dim}")
        if self.attn_init not in ("trunc_normal", "mimetic"):
            raise ValueError(f"attn_init must be 'trunc_normal' or 'mimetic', got {self.attn_init!r}")
        if not isinstance(self.attn_locality, bool):
            raise ValueError(f"attn_locality must be true or false, got {self.attn_locality!r}")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate", "patch_drop_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def replace(self, **changes: Any) -> ViTConfig:
        """A copy with `changes` applied; None values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data (img_size as an int or a [h, w] list)."""
        d = dataclasses.asdict(self)
        if isinstance(d["img_size"], tuple):
            d["img_size"] = list(d["img_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        """The inverse of to_dict; an unknown key is a ValueError (a config from a newer vit-app, or not ours)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        d = dict(d)
        if isinstance(d.get("img_size"), list):
            d["img_size"] = tuple(d["img_size"])
        return cls(**d)

    def timm_inexpressible(self) -> list[str]:
        """The options this model uses that timm's VisionTransformer cannot build (e.g. attn_locality); [] when
        timm builds it, outputs and all."""
        return sorted(k for k in TIMM_INEXPRESSIBLE if getattr(self, k))

    def timm_kwargs(self) -> dict[str, Any]:
        """The arguments of timm's VisionTransformer that build the same weights."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_TIMM}

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the weights and the outputs (not the training-only regularisers)."""
        return {k: v for k, v in self.to_dict().items() if k not in TRAINING_ONLY}

    def differences(self, other: ViTConfig) -> list[str]:
        """'key: ours vs theirs' for every architecture field that differs."""
        a, b = self.architecture(), other.architecture()
        return [f"{k}: {a[k]} vs {b[k]}" for k in a if a[k] != b[k]]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def resample_pos_embed(
    pos_embed: Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None, num_prefix_tokens: int = 1
) -> Tensor:
    """Bicubically resample a (1, prefix + H*W, D) position embedding to a new patch grid; prefix rows are kept."""
    n_old = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(n_old)
        if side * side != n_old:
            raise ValueError(f"cannot infer a square patch grid from {n_old} position embeddings; pass old_grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    D = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D).to(pos_embed.dtype)  # (1, H*W, D)
    return torch.cat([prefix, grid], dim=1)


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sin-cos position embeddings (big_vision's posemb_sincos_2d) for a grid: (1, H*W, dim)."""
    y, x = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4) / max(1, dim // 4 - 1))  # (dim / 4,)
    y = y.flatten()[:, None] * omega[None, :]  # (H*W, dim / 4)
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]


def locality_slopes(num_heads: int, grid: tuple[int, int]) -> Tensor:
    """Initial slopes of the locality bias, one a head: the bias on a logit is -slope * (squared distance between the
    two patches, in patches), a Gaussian neighbourhood of width 1 / sqrt(slope). The last head starts global (0);
    the others' widths grow geometrically from 1 patch to half the grid (8 x 8 patches, 4 heads: 1, 0.25, 0.0625, 0),
    so the model sees at several scales from its first step, as a convolution does, and learns how local to stay."""
    widest = max(1.0, max(grid) / 2)
    n = num_heads - 1
    widths = torch.tensor([widest ** (i / max(1, n - 1)) for i in range(n)])  # 1 ... widest patches
    return torch.cat([widths.pow(-2.0), torch.zeros(1)])


def patch_coords(grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """(row, column) of each patch in raster order: (H*W, 2) float."""
    y, x = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device), indexing="ij")
    return torch.stack([y.flatten(), x.flatten()], dim=1).float()


def squared_distances(coords: Tensor, num_prefix_tokens: int) -> Tensor:
    """Patch coordinates (B, N, 2) -> squared distances between tokens (B, P + N, P + N); 0 on the prefix tokens'
    rows and columns, which have no position."""
    d2 = (coords[:, :, None, :] - coords[:, None, :, :]).pow(2).sum(-1)  # (B, N, N)
    P = num_prefix_tokens
    return F.pad(d2, (P, 0, P, 0)) if P else d2


@torch.no_grad()
def mimetic_init(attn: Attention, g: torch.Generator, a: tuple[float, float] = (0.7, 0.4),
                 b: tuple[float, float] = (0.7, 0.4)) -> None:  # fmt: skip
    """Mimetic initialisation (Trockman & Kolter 2023; their values for small ViTs): each head's W_q W_k^T close to
    a0 Z + b0 I, so attention starts out favouring a token's own position, and W_v W_o close to a1 Z - b1 I; the
    products are factored by SVD. Z is Gaussian with variance 1 / dim."""
    D, H, hd = attn.qkv.in_features, attn.num_heads, attn.head_dim
    eye = torch.eye(D)

    def factors(alpha: float, beta: float) -> tuple[Tensor, Tensor]:
        m = alpha * torch.randn(D, D, generator=g) / D**0.5 + beta * eye
        u, s, vh = torch.linalg.svd(m)
        return u * s.sqrt(), (s.sqrt()[:, None] * vh)  # m = left @ right

    w = attn.qkv.weight.view(3, D, D)  # (q | k | v rows, out, in): q = x @ w[0].T
    for h in range(H):
        left, right = factors(a[0], b[0])
        rows = slice(h * hd, (h + 1) * hd)
        w[0, rows] = left[:, :hd].T  # q_h = x @ left[:, :hd]
        w[1, rows] = right[:hd, :]  # k_h = x @ right[:hd].T: q_h k_h^T ~ x (a Z + b I) x^T
    left, right = factors(a[1], -b[1])
    w[2] = left.T  # v = x @ left
    attn.proj.weight.copy_(right.T)  # out = v @ right: W_v W_o = a Z - b I


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescaling the survivors."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> patch tokens (B, H/p * W/p, D) with one strided convolution."""

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        B, C, H, W = x.shape
        ph, pw = self.patch_size
        if H % ph or W % pw:
            raise ValueError(f"input size {H}x{W} is not divisible by the patch size {ph}x{pw}")
        x = self.proj(x)  # (B, D, H/p, W/p)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D)


@torch.no_grad()
def whiten_patch_embed(embed: PatchEmbed, images: Tensor, eps: float = 1e-2, std: float = 0.02) -> None:
    """A data-whitened patch projection (airbench's first-layer init, for a ViT): the r = min(D, K) leading principal
    components of the K = C * P * P patch pixels, each scaled to unit variance ((lambda + eps * mean lambda)^-1/2),
    mixed into the D outputs by a random matrix with orthonormal columns (the global generator). Every output then
    hears every direction of patch space about equally, not mostly the mean colour. The weight is scaled so the
    outputs' mean variance is that of timm's init (trunc-normal `std` weights: std^2 * total pixel variance), and the
    bias centres them. It stays one linear map of each patch. images: (B, C, H, W) as training sees them."""
    w = embed.proj.weight  # (D, C, P, P)
    D, K = w.shape[0], w[0].numel()
    cols = F.unfold(images.detach().to("cpu", torch.float64), embed.patch_size, stride=embed.patch_size)  # (B, K, N)
    x = cols.transpose(1, 2).reshape(-1, K)  # (B * N, K)
    if len(x) <= K:
        raise ValueError(f"whitening a {K}-input patch projection needs more than {K} patches, got {len(x)}")
    mean = x.mean(0)  # (K,)
    cov = torch.cov(x.T)  # (K, K)
    lam, vec = torch.linalg.eigh(cov)  # ascending
    r = min(D, K)
    lam, vec = lam.flip(0)[:r].clamp(min=0), vec.flip(1)[:, :r]  # (r,), (K, r): the leading components
    white = vec.T / (lam + eps * lam.mean()).sqrt()[:, None]  # (r, K)
    mix = torch.linalg.qr(torch.randn(D, r, dtype=torch.float64))[0]  # (D, r), orthonormal columns
    weight = mix @ white  # (D, K)
    out_var = torch.einsum("dk,kl,dl->", weight, cov, weight) / D  # mean output variance
    weight *= (std**2 * cov.trace() / out_var).sqrt()
    w.copy_(weight.view_as(w).to(w))
    if embed.proj.bias is not None:
        embed.proj.bias.copy_((-weight @ mean).to(embed.proj.bias))  # centred outputs


@functools.cache
def _cpu_has_amx() -> bool:
    return cpu_has_amx()


@functools.cache
def _cpu_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without either, CPU bf16 is emulated and SDPA's kernel wins every case."""
    return cpu_supports_bf16()


@functools.cache
def _cpu_has_avx512() -> bool:
    return "AVX512" in torch.backends.cpu.get_cpu_capability()


@functools.cache
def _cpu_is_intel() -> bool:
    return cpu_vendor() == "GenuineIntel"


EXPLICIT_MAX_TOKENS = 65  # CIFAR-size token counts (32 px, patch 4: 64 patches + class token)


def explicit_attention_faster(x: Tensor, training: bool) -> bool:
    """Whether the explicit softmax path beats SDPA here, by measurement (`scripts/benchmark.py --only attention`
    and whole-model A/B runs; tables in the README). CPU bf16 autocast with native bf16, training: explicit on
    AVX512-BF16 and AMX CPUs alike (SDPA / explicit: AMD Zen 5 2.9-7.0x, Intel Xeon with AMX 2.3-6.9x); inference:
    explicit on AMD without AMX (Zen 5 2.2-2.8x), SDPA with AMX (whole ViTs on the Xeon 0.91-0.96x) and on Intel
    without it (a Xeon, family 6 model 207, AMX not exposed: whole models 0.95-0.97x). CPU bf16 without native bf16
    (emulated; AMD Zen 1, AVX2): SDPA (0.06-0.40x). fp32 inference: explicit at CIFAR-size token counts on AMD AVX-512
    CPUs (Zen 5 1.66x at 33 tokens, 1.17x at 65, 0.98x at 197), SDPA on Intel with AMX (Xeon whole ViTs 0.82-1.04x)
    and without (the model 207 Xeon: 0.83-0.89x, whole models 0.80-0.97x), and on AVX2 (Zen 1 0.75-0.85x, whole
    models 0.95-0.98x). fp32 training: SDPA everywhere."""
    if x.device.type != "cpu":
        return False
    amd_avx512 = _cpu_has_avx512() and not _cpu_has_amx() and not _cpu_is_intel()  # where explicit inference won
    if torch.is_autocast_enabled("cpu"):
        bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16
        return bf16 and _cpu_native_bf16() and (training or amd_avx512)
    return x.dtype == torch.float32 and not training and x.shape[1] <= EXPLICIT_MAX_TOKENS and amd_avx512


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection: Q, K and V all come from the same tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality: Tensor | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn: bool | None = None  # None: the measured rule (explicit_attention_faster); True: SDPA;
        # False: the explicit softmax. The maps, when asked for, and a learned bias always take the explicit path.
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # Per-head slopes of the 2-D locality bias (ViTConfig.attn_locality), learned; None without one (timm's)
        self.locality = nn.Parameter(locality.clone().float()) if locality is not None else None

    def bias(self, d2: Tensor | None) -> Tensor | None:
        """The additive bias on the attention logits from the tokens' squared distances (B, T, T): (B, h, T, T)."""
        if self.locality is None or d2 is None:
            return None
        return -self.locality.view(1, -1, 1, 1) * d2[:, None]

    def forward(self, x: Tensor, need_attn: bool = False, d2: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
        q, k, v = qkv.unbind(0)  # each (B, h, N, hd)
        bias = self.bias(d2)  # (B, h, N, N) or None
        attn: Tensor | None = None
        learn_bias = bias is not None and bias.requires_grad  # SDPA's CPU kernels pass no gradient to attn_mask
        sdpa = self.fused_attn if self.fused_attn is not None else not explicit_attention_faster(x, self.training)
        if sdpa and not need_attn and not learn_bias:
            p = self.attn_drop.p if self.training else 0.0
            mask = bias.to(q.dtype) if bias is not None else None
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, h, N, hd)
        else:
            logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
            if bias is not None:
                logits = logits + bias.to(logits.dtype)
            attn = logits.softmax(dim=-1)  # (B, h, N, N), rows sum to 1
            x = self.attn_drop(attn) @ v  # (B, h, N, hd)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, D)
        return self.proj_drop(self.proj(x)), attn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


HeadFusion = Literal["mean", "max", "min"]


def fuse_heads(attn: Tensor, head_fusion: HeadFusion = "mean") -> Tensor:
    """(B, heads, T, T) -> (B, T, T) by mean, max or min over heads."""
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    if head_fusion == "min":
        return attn.amin(dim=1)
    raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each with optional drop-path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        locality: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop, locality)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(
        self, x: Tensor, need_attn: bool = False, head_fusion: HeadFusion | None = None, d2: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        y, attn = self.attn(self.norm1(x), need_attn, d2)
        if attn is not None and head_fusion is not None:
            attn = fuse_heads(attn, head_fusion)  # (B, T, T): the (B, h, T, T) map is freed before the MLP
        x = x + self.drop_path1(y)
        del y  # not alive through the MLP: with it alive, fp32 CPU inference ran 0.96x timm with 3x its page faults
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x, attn


class VisionTransformer(nn.Module):
    """Vision Transformer with timm's argument names, parameter names and shapes."""

    def __init__(self, config: ViTConfig | None = None, **kwargs: Any) -> None:
        """VisionTransformer(config) or VisionTransformer(**timm_style_kwargs), e.g. embed_dim=192, depth=12."""
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("pass either a ViTConfig or keyword arguments, not both")
        cfg = self.config = config if config is not None else ViTConfig(**kwargs)
        img_size, patch_size, in_chans, embed_dim = cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim
        depth, num_heads, mlp_ratio, qkv_bias = cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias
        num_classes, class_token, global_pool = cfg.num_classes, cfg.class_token, cfg.global_pool
        use_fc_norm = global_pool == "avg" if cfg.fc_norm is None else cfg.fc_norm  # timm: GAP norms after pooling
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim
        self.has_class_token = class_token
        self.num_reg_tokens = cfg.reg_tokens
        self.num_prefix_tokens = (1 if class_token else 0) + cfg.reg_tokens  # [cls] [reg x R] then the patches
        self.no_embed_class = cfg.no_embed_class
        self.patch_drop_rate = cfg.patch_drop_rate  # a plain attribute (no weights): a trainer may schedule it

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, embed_dim)) if cfg.reg_tokens else None
        embedded = 0 if cfg.no_embed_class else self.num_prefix_tokens  # prefix tokens with a position embedding
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + embedded, embed_dim))
        rates = [cfg.drop_path_rate * i / max(1, depth - 1) for i in range(depth)]  # stochastic depth grows with depth
        slopes = locality_slopes(num_heads, self.patch_embed.grid_size) if cfg.attn_locality else None
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, attn_drop=cfg.attn_drop_rate, drop_path=r, locality=slopes)
            for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if not use_fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm-style init: trunc-normal(0.02) linear weights and position embedding, zero biases, zero head."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Patch projection as a linear layer over the flattened patch (as in timm's jax init).
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
        if self.config.pos_embed_init == "sincos":
            P = 0 if self.no_embed_class else self.num_prefix_tokens
            self.pos_embed[:, P:] = sincos_2d(self.grid_size, self.embed_dim)
            self.pos_embed[:, :P] = 0.0
            self.pos_embed.requires_grad_(False)  # fixed: a buffer in all but name, so timm state dicts still fit
        if self.config.attn_init == "mimetic":
            g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,)).item()))
            for blk in self.blocks:
                mimetic_init(blk.attn, g)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "reg_token"}

    def set_fused_attn(self, enable: bool | None) -> None:
        """Put every block on SDPA (True) or the explicit softmax path (False), or back on the measured rule (None):
        tests and the benchmark compare the two."""
        for blk in self.blocks:
            blk.attn.fused_attn = enable

    def _pos_embed(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B = x.shape[0]
        embedded = 0 if self.no_embed_class else self.num_prefix_tokens
        pos = resample_pos_embed(self.pos_embed, grid, self.grid_size, embedded)  # a no-op at the training size
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            return torch.cat([*prefix, x + pos], dim=1)  # (B, P + N, D)
        return torch.cat([*prefix, x], dim=1) + pos  # (B, P + N, D)

    def tokens_and_distances(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The blocks' input tokens (B, P + N, D) and, with attn_locality, the squared distances between them
        (B or 1, P + N, P + N) that every block's locality bias reads; None without it."""
        x, grid = self.patch_embed(x)  # (B, N, D)
        x = self._pos_embed(x, grid)  # (B, prefix + N, D)
        coords = patch_coords(grid, x.device)[None] if self.config.attn_locality else None  # (1, N, 2)
        if self.training and self.patch_drop_rate > 0:
            x, coords = self._drop_patches(x, coords)
        d2 = squared_distances(coords, self.num_prefix_tokens) if coords is not None else None
        return x, d2

    def _drop_patches(self, x: Tensor, coords: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """PatchDropout (Liu et al. 2022, timm's `patch_drop_rate`): in training, keep a random subset of the patch
        tokens per image (position embeddings already added) and every prefix token. Fewer tokens make each step
        cheaper; evaluation always sees all of them. (B, P + N, D) -> (B, P + keep, D); the patches' coordinates
        (1, N, 2), when given, are kept alike -> (B, keep, 2)."""
        P = self.num_prefix_tokens
        B, T, D = x.shape
        keep = max(1, int((T - P) * (1.0 - self.patch_drop_rate)))
        idx = torch.rand(B, T - P, device=x.device).topk(keep, dim=1).indices  # (B, keep), uniform without repeats
        patches = x[:, P:].gather(1, idx.unsqueeze(-1).expand(-1, -1, D))  # (B, keep, D)
        if coords is not None:
            coords = coords.expand(B, -1, -1).gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))  # (B, keep, 2)
        return torch.cat([x[:, :P], patches], dim=1), coords

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> normed tokens (B, prefix + N, D)."""
        x, d2 = self.tokens_and_distances(x)
        for blk in self.blocks:
            x, _ = blk(x, d2=d2)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool tokens (B, T, D) -> (B, D), then the classifier -> (B, num_classes)."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_with_attention(self, x: Tensor, head_fusion: HeadFusion | None = None) -> tuple[Tensor, list[Tensor]]:
        """Logits and each block's post-softmax attention, from the q and k that made the output.

        Maps are (B, heads, T, T); with `head_fusion` each is reduced over heads right away to (B, T, T), so only
        L small maps are kept (what rollout needs)."""
        x, d2 = self.tokens_and_distances(x)
        attentions: list[Tensor] = []
        for blk in self.blocks:
            x, attn = blk(x, need_attn=True, head_fusion=head_fusion, d2=d2)
            assert attn is not None
            attentions.append(attn)
        return self.forward_head(self.norm(x)), attentions

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Weights trained at another image size: resample their position embedding to our grid (bicubic).
        key = prefix + "pos_embed"
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape:
            src = state_dict[key]
            if src.ndim != 3 or src.shape[-1] != self.pos_embed.shape[-1]:
                raise ValueError(f"{key}: shape {tuple(src.shape)} does not fit embed_dim {self.embed_dim}")
            embedded = 0 if self.no_embed_class else self.num_prefix_tokens
            state_dict[key] = resample_pos_embed(src, self.grid_size, None, embedded)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# Named sizes (big_vision style). The CIFAR presets follow the small-data ViT literature (patch 4 on 32 px).
PRESETS: dict[str, ViTConfig] = {
    "vit_cifar_tiny": ViTConfig(img_size=32, patch_size=4, num_classes=10, embed_dim=192, depth=9, num_heads=3,
                                mlp_ratio=2.0),
    "vit_cifar_small": ViTConfig(img_size=32, patch_size=4, num_classes=10, embed_dim=384, depth=7, num_heads=6,
                                 mlp_ratio=2.0),
    "vit_tiny_patch16_224": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
}  # fmt: skip


def preset_config(name: str, **overrides: Any) -> ViTConfig:
    """A preset's config with `overrides` (timm's names; None values ignored) applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def create_model(name: str, **overrides: Any) -> VisionTransformer:
    """Build a preset by name, e.g. create_model("vit_small_patch16_224", num_classes=10)."""
    return VisionTransformer(preset_config(name, **overrides))
