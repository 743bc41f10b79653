"""MuonAdamW: the right parameters on each half, the same steps as the two torch optimisers, schedulers reach both
halves, and a state_dict round trip (a resumed run) continues exactly."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vit_app.model import VisionTransformer
from vit_app.optim import BatchedMuon, MuonAdamW, orthogonalize, param_groups

KW = dict(img_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def _model() -> VisionTransformer:
    torch.manual_seed(0)
    m = VisionTransformer(**KW)
    torch.nn.init.normal_(m.head.weight, std=0.02)  # timm's zero head would leave the blocks without gradient
    return m


def _loss(m: torch.nn.Module, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)
    return torch.nn.functional.cross_entropy(m(x), y)


def _train(m: torch.nn.Module, opt: torch.optim.Optimizer, seeds: range, sched=None) -> None:
    for s in seeds:
        opt.zero_grad()
        opt.step(lambda s=s: _loss(m, s).backward())
        if sched is not None:
            sched.step()


def _train_pair(m: torch.nn.Module, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer, seeds: range) -> None:
    """The reference: the same steps as _train, by two separate optimisers over the two halves."""
    for s in seeds:
        muon.zero_grad(), adamw.zero_grad()
        _loss(m, s).backward()
        muon.step(), adamw.step()


def test_muon_groups_hold_exactly_the_blocks_weight_matrices() -> None:
    m = _model()
    groups = param_groups(m, 0.05, muon=True)
    names = {id(p): n for n, p in m.named_parameters()}
    on_muon = {names[id(p)] for g in groups if g.get("muon") for p in g["params"]}
    expected = {f"blocks.{i}.{w}.weight" for i in range(2) for w in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert on_muon == expected
    every = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(every) == sorted(names.values())  # each parameter once
    assert all(g["weight_decay"] == 0.05 for g in groups if g.get("muon"))


def test_muon_embed_adds_the_patch_embedding_and_nothing_else() -> None:
    m = _model()
    names = {id(p): n for n, p in m.named_parameters()}
    on_muon = {names[id(p)] for g in param_groups(m, 0.05, muon=True, muon_embed=True) if g.get("muon")
               for p in g["params"]}  # fmt: skip
    blocks = {f"blocks.{i}.{w}.weight" for i in range(2) for w in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert on_muon == blocks | {"patch_embed.proj.weight"}


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon, the reference, is PyTorch >= 2.9")
def test_a_kernel_steps_as_its_matrix_under_torch_muon() -> None:
    """The patch embedding's (D, C, P, P) kernel moves exactly as torch.optim.Muon moves the (D, C * P * P) matrix."""
    kernel = _model().patch_embed.proj.weight  # (32, 3, 4, 4)
    flat = torch.nn.Parameter(kernel.detach().reshape(32, -1).clone())  # (32, 48)
    for seed in range(3):
        g = torch.randn(kernel.shape, generator=torch.Generator().manual_seed(seed))
        kernel.grad, flat.grad = g.clone(), g.reshape(32, -1).clone()
        if seed == 0:
            ours = BatchedMuon([kernel], lr=1e-2, weight_decay=0.05, dtype=torch.bfloat16)
            ref = torch.optim.Muon([flat], lr=1e-2, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
        ours.step(), ref.step()
    assert torch.equal(kernel.detach().reshape(32, -1), flat.detach())
    assert (flat - _model().patch_embed.proj.weight.detach().reshape(32, -1)).abs().max() > 1e-3  # it did move


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon, the reference, is PyTorch >= 2.9")
def test_steps_equal_torch_muon_and_adamw_side_by_side() -> None:
    a, b = _model(), _model()
    opt_a = MuonAdamW(param_groups(a, 0.05, muon=True), lr=1e-2, ns_dtype=torch.bfloat16)  # torch's dtype, always
    gb = param_groups(b, 0.05, muon=True)
    muon = torch.optim.Muon([g for g in gb if g.get("muon")], lr=1e-2, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([g for g in gb if not g.get("muon")], lr=1e-2)
    _train(a, opt_a, range(3))
    _train_pair(b, muon, adamw, range(3))
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n
    moved = a.blocks[0].attn.qkv.weight - _model().blocks[0].attn.qkv.weight
    assert moved.abs().max() > 1e-3  # the Muon half did step


def test_a_scheduler_sets_the_lr_of_both_halves() -> None:
    opt = MuonAdamW(param_groups(_model(), 0.05, muon=True), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    sched.step(), sched.step()
    assert [g["lr"] for g in opt._muon.param_groups] == [pytest.approx(0.025)]
    assert all(g["lr"] == pytest.approx(0.025) for g in opt._adamw.param_groups)


def test_state_dict_round_trip_continues_the_run_exactly() -> None:
    def schedule(step: int) -> float:
        return 1.0 / (1 + step)

    ref = _model()
    opt = MuonAdamW(param_groups(ref, 0.05, muon=True), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    _train(ref, opt, range(3), sched)
    saved = copy.deepcopy((ref.state_dict(), opt.state_dict(), sched.state_dict()))  # as written to a checkpoint
    saved_model, saved_opt, saved_sched = saved
    _train(ref, opt, range(3, 6), sched)

    resumed = _model()
    resumed.load_state_dict(saved_model)
    opt2 = MuonAdamW(param_groups(resumed, 0.05, muon=True), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, schedule)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert opt2.param_groups[0] is opt2._muon.param_groups[0]  # the loaded groups are the ones the scheduler sets
    _train(resumed, opt2, range(3, 6), sched2)
    for (n, p), q in zip(ref.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
    assert "momentum_buffer" in next(iter(opt2._muon.state.values()))


def test_no_weight_matrix_or_a_non_matrix_is_refused() -> None:
    with pytest.raises(ValueError, match="muon=True"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))]}], lr=1e-3)
    with pytest.raises(ValueError, match=r"weight matrices only; got a parameter of shape \(3,\)"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}], lr=1e-3)


def test_muon_lr_scale_multiplies_only_the_muon_groups_lr_through_the_schedule() -> None:
    groups = param_groups(_model(), 0.05, lr=0.1, layer_decay=0.5, muon=True, muon_lr_scale=2.0)
    plain = param_groups(_model(), 0.05, lr=0.1, layer_decay=0.5, muon=True)
    assert [g["lr"] for g in groups] == [2.0 * g["lr"] if g.get("muon") else g["lr"] for g in plain]
    opt = MuonAdamW(param_groups(_model(), 0.05, lr=0.1, muon=True, muon_lr_scale=3.0), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    sched.step(), sched.step()
    assert [g["lr"] for g in opt._muon.param_groups] == [pytest.approx(0.075)]
    assert all(g["lr"] == pytest.approx(0.025) for g in opt._adamw.param_groups)


def test_muon_lr_scale_steps_like_muon_at_the_scaled_lr() -> None:
    """Scale 2 at lr 1e-2 moves every parameter exactly as Muon at 2e-2 beside AdamW at 1e-2 does."""
    a, b = _model(), _model()
    opt_a = MuonAdamW(param_groups(a, 0.05, lr=1e-2, muon=True, muon_lr_scale=2.0), lr=1e-2)
    gb = param_groups(b, 0.05, muon=True)
    muon = BatchedMuon([g for g in gb if g.get("muon")], lr=2e-2)
    adamw = torch.optim.AdamW([g for g in gb if not g.get("muon")], lr=1e-2)
    _train(a, opt_a, range(3))
    _train_pair(b, muon, adamw, range(3))
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n


def test_split_qkv_puts_only_the_qkv_weights_in_split_groups() -> None:
    m = _model()
    names = {id(p): n for n, p in m.named_parameters()}
    groups = param_groups(m, 0.05, muon=True, muon_split_qkv=True)
    split = {names[id(p)] for g in groups if g.get("split") == 3 for p in g["params"]}
    assert split == {"blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight"}
    assert all(g.get("muon") for g in groups if g.get("split"))
    every = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(every) == sorted(names.values())  # each parameter once
    assert not any(g.get("split") for g in param_groups(m, 0.05, muon=True))  # off by default


def test_a_split_weight_steps_as_its_parts_would_apart() -> None:
    """A (3A, B) weight in a split=3 group moves exactly as three (A, B) weights with its rows' gradients, weight
    decay included (applied once to each row): each part is orthogonalised on its own."""
    torch.manual_seed(0)
    fused = torch.nn.Parameter(torch.randn(3 * 8, 16))
    parts = [torch.nn.Parameter(fused.detach()[i * 8 : (i + 1) * 8].clone()) for i in range(3)]
    one = BatchedMuon([{"params": [fused], "split": 3}], lr=0.02, weight_decay=0.1, dtype=torch.float32)
    three = BatchedMuon([{"params": parts}], lr=0.02, weight_decay=0.1, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        grad = torch.randn(3 * 8, 16, generator=g)
        fused.grad = grad.clone()
        for i, p in enumerate(parts):
            p.grad = grad[i * 8 : (i + 1) * 8].clone()
        one.step(), three.step()
    assert torch.equal(fused.detach(), torch.cat([p.detach() for p in parts]))
    # the same gradient, not split: one (24, 16) matrix orthogonalised, a different step
    start = fused.detach().clone()
    whole = torch.nn.Parameter(start.clone())
    whole.grad, fused.grad = grad.clone(), grad.clone()
    BatchedMuon([{"params": [whole]}], lr=0.02, dtype=torch.float32).step()
    BatchedMuon([{"params": [fused], "split": 3}], lr=0.02, dtype=torch.float32).step()
    assert not torch.allclose(whole.detach() - start, fused.detach() - start, atol=1e-4)


def _normuon_reference(w: torch.Tensor, grads: list[torch.Tensor], lr: float, decay: float) -> torch.Tensor:
    """NorMuon written out for one matrix (Li et al. 2025, Algorithm 1, with Muon's Nesterov momentum and the RMS of
    an AdamW step): the weights after one step per gradient."""
    w, buf, v = w.clone(), torch.zeros_like(w), torch.zeros(len(w))
    for g in grads:
        buf = 0.95 * buf + 0.05 * g
        o = orthogonalize((0.05 * g + 0.95 * buf)[None], (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)[0]
        v = 0.95 * v + 0.05 * (o**2).mean(dim=1)
        o = o / (v.sqrt()[:, None] + 1e-8)
        w = w * (1 - lr * decay) - 0.2 * lr * math.sqrt(o.numel()) / o.norm() * o
    return w


def test_normuon_steps_as_written_out_for_each_matrix_and_part() -> None:
    """Two shapes and a split weight in one group: each (part of a) matrix moves as the written-out NorMuon."""
    g = torch.Generator().manual_seed(3)
    tall, wide = torch.randn(24, 8, generator=g), torch.randn(8, 16, generator=g)
    fused = torch.randn(3 * 8, 16, generator=g)
    params = [torch.nn.Parameter(t.clone()) for t in (tall, wide, fused)]
    opt = BatchedMuon([{"params": params[:2]}, {"params": params[2:], "split": 3}], lr=0.02, weight_decay=0.1,
                      dtype=torch.float32, normuon_beta2=0.95)  # fmt: skip
    grads = [[torch.randn(t.shape, generator=g) for _ in range(3)] for t in (tall, wide, fused)]
    for k in range(3):
        for p, gs in zip(params, grads):
            p.grad = gs[k].clone()
        opt.step()
    torch.testing.assert_close(params[0].detach(), _normuon_reference(tall, grads[0], 0.02, 0.1))
    torch.testing.assert_close(params[1].detach(), _normuon_reference(wide, grads[1], 0.02, 0.1))
    for i in range(3):  # Q, K and V: each normalised on its own rows and RMS
        rows = slice(i * 8, (i + 1) * 8)
        want = _normuon_reference(fused[rows], [gr[rows] for gr in grads[2]], 0.02, 0.1)
        torch.testing.assert_close(params[2].detach()[rows], want)
    assert opt.state[params[2]]["neuron_second_moment"].shape == (3, 8)


def test_normuon_evens_out_the_rows_of_a_tall_update() -> None:
    """A tall matrix's orthogonalised update has rows of unequal size; NorMuon's first step moves every row by the
    same RMS (0.2 lr)."""
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(24, 8, generator=g) * torch.linspace(0.1, 3.0, 24)[:, None]
    moved = {}
    for beta2 in (None, 0.95):
        w = torch.nn.Parameter(torch.zeros(24, 8))
        w.grad = grad.clone()
        BatchedMuon([w], lr=0.01, dtype=torch.float32, normuon_beta2=beta2).step()
        moved[beta2] = w.detach().square().mean(dim=1).sqrt()  # each row's RMS step
    torch.testing.assert_close(moved[0.95], torch.full((24,), 0.002), rtol=1e-4, atol=0)
    assert moved[None].max() / moved[None].min() > 1.5  # plain Muon: rows of unequal size
    # about the same RMS as plain Muon's (whose Newton-Schulz steps leave singular values near, not at, 1)
    torch.testing.assert_close(moved[None].square().mean().sqrt(), torch.tensor(0.002), rtol=0.05, atol=0)
