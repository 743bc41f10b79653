"""Optimisers: parameter groups (weight decay, layer-wise LR decay) and AdamW, or Muon for the transformer blocks'
weight matrices with AdamW for everything else, as one torch Optimizer.

Muon (Keller Jordan, 2024; `torch.optim.Muon` from PyTorch 2.9) replaces each 2-D update by its orthogonalised
momentum (a few Newton-Schulz steps), so every direction of a weight matrix moves at the same rate. It is meant for
hidden matrices only: the patch embedding, position and class embeddings, head, norms and biases stay on AdamW.
Muon's steps are scaled to AdamW's RMS (PyTorch's `adjust_lr_fn="match_rms_adamw"`), so one learning rate and
weight decay serve both (`muon_lr_scale` multiplies Muon's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

OptimizerName = Literal["adamw", "muon"]
MUON_MOMENTUM = 0.95  # Muon defaults (Keller Jordan's and PyTorch's), shared by every signature that takes them
MUON_NS_STEPS = 5
NORMUON_BETA2 = 0.95  # NorMuon (Li et al. 2025): the EMA of each neuron's mean-square update


def is_muon_param(name: str, p: torch.Tensor, embed: bool = False) -> bool:
    """A weight matrix inside a transformer block (qkv, proj, fc1, fc2): what Muon is for; with `embed`, also the
    patch embedding's projection (D, C, P, P), stepped as the (D, C * P * P) matrix it is."""
    return (name.startswith("blocks.") and p.ndim == 2) or (embed and name == "patch_embed.proj.weight")


def _run_closure(closure: Callable[[], Any] | None) -> Any:
    """The forward and backward an optimiser's `step(closure)` runs first (Lightning passes one); its loss."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def ns_dtype(device: torch.device) -> torch.dtype:
    """The Newton-Schulz iteration's dtype: bf16 where the hardware computes in it (GPUs, CPUs with AVX512-BF16 or
    AMX), as torch.optim.Muon does; fp32 on other CPUs, where bf16 matmuls are emulated (six 128 x 512 matrices:
    13 ms in fp32, 515 ms in bf16 on an AMD EPYC without AVX512-BF16)."""
    if device.type == "cuda":
        return torch.bfloat16
    from vit_app.precision import cpu_supports_bf16

    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def orthogonalize(
    g: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype = torch.bfloat16
) -> Tensor:
    """Newton-Schulz quintic iteration towards the nearest semi-orthogonal matrix, in `dtype`, for a stack of
    same-shape matrices at once: (n, A, B) -> (n, A, B). The same iteration as torch.optim.Muon's, batched."""
    a, b, c = coefficients
    x = g.to(dtype)
    wide = x.size(-2) > x.size(-1)
    if wide:
        x = x.mT  # iterate on the side with fewer rows: the Gram matrix is (min, min)
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT  # (n, r, r)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b * G + c * G^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a * X + (b * G + c * G^2) X
    return x.mT if wide else x


def neuron_normalized(ortho: Tensor, moments: list[Tensor], beta2: float) -> Tensor:
    """NorMuon's step on (n, A, B) orthogonalised updates: fold each row's mean square into its EMA (`moments`, n
    tensors of (A,), updated in place), divide each row by the EMA's root, then scale each matrix to RMS 1."""
    o = ortho.float()
    v = torch.stack(moments).lerp_(o.square().mean(-1), 1 - beta2)  # (n, A)
    for m, row in zip(moments, v):
        m.copy_(row)
    o = o / (v.sqrt()[..., None] + 1e-8)  # (n, A, B)
    return o / o.square().mean(dim=(-2, -1), keepdim=True).sqrt().clamp(min=1e-12)


class BatchedMuon(torch.optim.Optimizer):
    """The update of torch.optim.Muon (PyTorch >= 2.9) with `adjust_lr_fn="match_rms_adamw"`, orthogonalising all
    matrices of one shape in one batched call (a ViT has four shapes, each once per block): on 2 CPU cores its step
    measured 22 ms -> 13 ms for the cifar10_cpu model. Same state (`momentum_buffer`), bitwise the same update
    (tests/test_optim.py), and it runs on every PyTorch this package supports. A parameter of more than two
    dimensions (a patch embedding's (D, C, P, P) kernel) is stepped as its (D, C * P * P) matrix. A group with
    `split=k` steps each of its (k * A, B) weights as k matrices (A, B), each orthogonalised on its own (a fused
    qkv weight as Q, K and V). With `normuon_beta2` (NorMuon, Li et al. 2025), each row (output neuron) of the
    orthogonalised update is divided by the root of an EMA of its mean square, and the whole is scaled back to the
    same RMS, so no neuron's weights move much faster than the others'."""

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = MUON_MOMENTUM,
        weight_decay: float = 0.0,
        ns_steps: int = MUON_NS_STEPS,
        dtype: torch.dtype | None = None,
        normuon_beta2: float | None = None,
    ) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True,
                        ns_coefficients=(3.4445, -4.775, 2.0315), ns_steps=ns_steps, eps=1e-7,
                        normuon_beta2=normuon_beta2)  # fmt: skip
        self.dtype = dtype  # None: ns_dtype(the parameters' device)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon steps weight matrices only; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, decay, mu, beta2 = group["lr"], group["weight_decay"], group["momentum"], group.get("normuon_beta2")
            by_shape: dict[torch.Size, list[tuple[Tensor, Tensor, Tensor | None]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                buf = state.setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                parts = group.get("split", 1)  # e.g. 3: a fused qkv weight, orthogonalised as Q, K and V apart
                shape = torch.Size((len(p) // parts, p[0].numel()))  # (D / parts, rest)
                moments: list[Tensor | None] = [None] * parts
                if beta2 is not None:  # NorMuon: (parts, D / parts), the EMA of each row's mean-square update
                    moments = list(state.setdefault("neuron_second_moment", p.new_zeros(parts, shape[0])))
                views = zip(p.view(parts, *shape), update.reshape(parts, *shape), moments)  # (part, its update, v)
                by_shape.setdefault(shape, []).extend(views)
            for shape, parts_of in by_shape.items():
                stacked = torch.stack([u for _, u, _ in parts_of])  # (n, A, B)
                dtype = self.dtype or ns_dtype(stacked.device)
                ortho = orthogonalize(stacked, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                step_lr = lr * 0.2 * math.sqrt(max(shape))  # "match_rms_adamw": the RMS of an AdamW step
                if beta2 is not None:  # rows evened out, then RMS 1: the same RMS of step, lr * 0.2
                    ortho = neuron_normalized(ortho, [m for *_, m in parts_of], beta2)  # type: ignore[misc]
                    step_lr = lr * 0.2
                for (w, _, _), o in zip(parts_of, ortho):
                    w.mul_(1 - lr * decay).add_(o, alpha=-step_lr)
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """One optimiser over two: groups tagged `muon=True` step with Muon, the others with AdamW.

    `param_groups` is the two halves' own group dicts, so an LR scheduler, Lightning's gradient clipping and
    `zero_grad` reach every parameter; `state_dict` holds both halves' state."""

    def __init__(
        self,
        groups: list[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = MUON_MOMENTUM,
        ns_steps: int = MUON_NS_STEPS,
        ns_dtype: torch.dtype | None = None,
        normuon_beta2: float | None = None,
    ) -> None:
        muon = [g for g in groups if g.get("muon")]
        adamw = [g for g in groups if not g.get("muon")]
        if not muon:
            raise ValueError("MuonAdamW: no parameter group is marked muon=True (no weight matrices to orthogonalise)")
        self._muon = BatchedMuon(muon, lr=lr, momentum=momentum, ns_steps=ns_steps, dtype=ns_dtype,
                                 normuon_beta2=normuon_beta2)  # fmt: skip
        self._adamw = torch.optim.AdamW(adamw, lr=lr, betas=betas) if adamw else None
        super().__init__(self._halves_groups(), {"lr": lr})

    def _halves_groups(self) -> list[dict[str, Any]]:
        return self._muon.param_groups + (self._adamw.param_groups if self._adamw is not None else [])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = _run_closure(closure)
        self._muon.step()
        if self._adamw is not None:
            self._adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self._muon.state_dict(), "adamw": self._adamw.state_dict() if self._adamw else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._muon.load_state_dict(state_dict["muon"])
        if self._adamw is not None:
            self._adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self._halves_groups()  # loading replaced the halves' group dicts: share the new ones


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for blocks.i, depth + 1 for the final norm and head (layer-wise LR decay)."""
    if name.startswith(("patch_embed.", "cls_token", "pos_embed", "reg_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    lr: float = 1e-3,
    layer_decay: float | None = None,
    muon: bool = False,
    muon_embed: bool = False,
    muon_lr_scale: float = 1.0,
    muon_split_qkv: bool = False,
) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices; none on norms, biases, position and class embeddings; with
    `layer_decay`, one group per (layer, decay) whose lr is lr * layer_decay^(depth + 1 - layer). With `muon`, the
    blocks' weight matrices (and, with `muon_embed`, the patch embedding's) go to groups of their own marked
    muon=True (see MuonAdamW), whose lr is multiplied by `muon_lr_scale`; with `muon_split_qkv`, the fused qkv
    weights go to groups marked split=3, stepped as Q, K and V apart."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple[int, bool, bool, int], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip
        layer = layer_id(name, depth) if layer_decay is not None else depth + 1
        to_muon = muon and is_muon_param(name, p, embed=muon_embed)
        split = 3 if to_muon and muon_split_qkv and name.endswith(".attn.qkv.weight") else 1
        g = groups.setdefault(
            (layer, no_decay, to_muon, split), {"params": [], "weight_decay": 0.0 if no_decay else weight_decay}
        )
        group_lr = lr * layer_decay ** (depth + 1 - layer) if layer_decay is not None else lr
        if to_muon:
            g["muon"] = True
            group_lr *= muon_lr_scale
        if split > 1:
            g["split"] = split
        if layer_decay is not None or group_lr != lr:  # a group without its own lr takes the optimiser's
            g["lr"] = group_lr
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    model: torch.nn.Module,
    name: OptimizerName,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    layer_decay: float | None = None,
    muon_momentum: float = MUON_MOMENTUM,
    muon_ns_steps: int = MUON_NS_STEPS,
    muon_embed: bool = False,
    muon_lr_scale: float = 1.0,
    muon_split_qkv: bool = False,
    normuon: bool = False,
) -> torch.optim.Optimizer:
    """The named optimiser over the model's parameter groups (the schedule is the trainer's); `normuon`: Muon's
    updates neuron-normalised (BatchedMuon's `normuon_beta2`, NORMUON_BETA2)."""
    muon = name == "muon"
    groups = param_groups(model, weight_decay, lr, layer_decay, muon, muon_embed, muon_lr_scale, muon_split_qkv)
    if muon:
        return MuonAdamW(groups, lr, betas, momentum=muon_momentum, ns_steps=muon_ns_steps,
                         normuon_beta2=NORMUON_BETA2 if normuon else None)  # fmt: skip
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
