"""Our VisionTransformer against timm's, attention paths, gradients, presets and position-embedding resampling."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT

import vit_app.model as vit_model
from vit_app.model import (
    EXPLICIT_MAX_TOKENS,
    PRESETS,
    PatchEmbed,
    VisionTransformer,
    create_model,
    explicit_attention_faster,
    resample_pos_embed,
    whiten_patch_embed,
)

PARITY_SHAPES = {
    "cifar_32_p4_cls": dict(img_size=32, patch_size=4, embed_dim=96, depth=3, num_heads=3, num_classes=10),
    "imagenet_224_p16": dict(img_size=224, patch_size=16, embed_dim=192, depth=2, num_heads=3, num_classes=1000),
    "gap_no_cls": dict(
        img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, class_token=False, global_pool="avg"
    ),
    "mlp_ratio_2.5_no_qkv_bias": dict(
        img_size=64, patch_size=8, embed_dim=128, depth=2, num_heads=4, mlp_ratio=2.5, qkv_bias=False
    ),
    "gap_with_cls": dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, global_pool="avg"),
}


def _randomize(model: torch.nn.Module) -> None:
    """Non-trivial weights everywhere (the zero head and unit norms would hide mistakes)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0)
            )


@pytest.mark.parametrize("name", PARITY_SHAPES)
def test_timm_weights_load_strict_and_logits_match(name: str) -> None:
    kw = PARITY_SHAPES[name]
    ref = TimmViT(**kw).eval()
    _randomize(ref)
    ours = VisionTransformer(**kw).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 3, kw["img_size"], kw["img_size"])
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
        feat_diff = (ours.forward_features(x) - ref.forward_features(x)).abs().max().item()
        scale = max(1.0, ref(x).abs().max().item())  # float32 sums in another order: an error relative to size
    assert diff <= 1e-4 * scale, f"{name}: logits differ by {diff}"
    assert feat_diff <= 1e-4 * scale


# The CPU kinds measured: (AMX, native bf16, AVX-512, Intel) = Intel Xeon with AMX, an Intel Xeon whose VM hides AMX
# (AVX512-BF16 alone), AMD Zen 4/5, AMD Zen 1 (AVX2 only)
CPU_KINDS = {"xeon_amx": (True, True, True, True), "xeon_no_amx": (False, True, True, True),
             "zen5": (False, True, True, False), "zen1": (False, False, False, False)}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(CPU_KINDS))
def test_attention_path_rule_follows_the_measured_cases(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """SDPA or explicit per case (scripts/benchmark.py --only attention, README): explicit under CPU bf16 autocast in
    training where the CPU has native bf16; in inference only on AMD's AVX-512 CPUs (bf16 at any length, fp32 at
    CIFAR-size token counts); SDPA otherwise, and everywhere on an AVX2 CPU without native bf16."""
    amx, native_bf16, avx512, intel = CPU_KINDS[kind]
    monkeypatch.setattr(vit_model, "_cpu_has_amx", lambda: amx)
    monkeypatch.setattr(vit_model, "_cpu_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(vit_model, "_cpu_has_avx512", lambda: avx512)
    monkeypatch.setattr(vit_model, "_cpu_is_intel", lambda: intel)
    explicit_infer = kind == "zen5"
    short, long = torch.zeros(2, 33, 64), torch.zeros(2, 197, 64)
    assert explicit_attention_faster(short, training=False) is explicit_infer
    assert explicit_attention_faster(torch.zeros(2, EXPLICIT_MAX_TOKENS, 64), training=False) is explicit_infer
    assert not explicit_attention_faster(long, training=False)
    assert not explicit_attention_faster(short, training=True)
    assert not explicit_attention_faster(short.double(), training=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert explicit_attention_faster(long, training=True) is native_bf16
        assert explicit_attention_faster(short, training=True) is native_bf16
        assert explicit_attention_faster(short, training=False) is explicit_infer
        assert explicit_attention_faster(long, training=False) is explicit_infer
    with torch.autocast("cpu", dtype=torch.float16):
        assert not explicit_attention_faster(short, training=False)


def test_fused_and_explicit_attention_agree_and_maps_are_returned() -> None:
    # 48 px / patch 4: 145 tokens, above EXPLICIT_MAX_TOKENS, so the fused forward really runs SDPA
    m = VisionTransformer(img_size=48, patch_size=4, embed_dim=64, depth=3, num_heads=4, num_classes=7).eval()
    _randomize(m)
    x = torch.randn(4, 3, 48, 48)
    assert not explicit_attention_faster(torch.zeros(4, 145, 64), training=False)
    with torch.no_grad():
        fused = m(x)
        m.set_fused_attn(False)
        explicit = m(x)
        m.set_fused_attn(None)
        logits, attns = m.forward_with_attention(x)
    tol = 1e-5 * max(1.0, fused.abs().max().item())  # SDPA's blockwise softmax vs ours: rounding only
    assert (fused - explicit).abs().max().item() <= tol
    assert (logits - fused).abs().max().item() <= tol
    assert len(attns) == 3
    for a in attns:
        assert a.shape == (4, 4, 145, 145)
        torch.testing.assert_close(a.sum(-1), torch.ones(4, 4, 145), atol=1e-5, rtol=0)
        assert (a >= 0).all()


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_head_fused_maps_equal_the_full_maps_fused(fusion: str) -> None:
    """forward_with_attention(head_fusion=...) reduces each block's map inside the block: same maps, same logits."""
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=3).eval()
    _randomize(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, full = m.forward_with_attention(x)
        fused_logits, fused = m.forward_with_attention(x, head_fusion=fusion)
    reduce = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}[fusion]
    torch.testing.assert_close(fused_logits, logits, rtol=0, atol=0)
    assert len(fused) == 2
    for f, a in zip(fused, full, strict=True):
        assert a.shape == (2, 4, 17, 17) and f.shape == (2, 17, 17)
        torch.testing.assert_close(f, reduce(a, dim=1), rtol=0, atol=0)


def test_attention_maps_are_the_ones_used_for_the_output() -> None:
    """Recompute block 0's attention by hand from its qkv weights: the returned map must equal it."""
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3).eval()
    _randomize(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, (attn,) = m.forward_with_attention(x)
        tokens = m.tokens_and_distances(x)[0]
        h = m.blocks[0].norm1(tokens)
        q, k, _ = m.blocks[0].attn.qkv(h).reshape(2, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)
        expected = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1)
    torch.testing.assert_close(attn, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(class_token=False, global_pool="avg")])
def test_every_parameter_gets_a_finite_gradient(kw: dict) -> None:
    m = VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, num_classes=5, **kw)
    _randomize(m)  # the zero-initialised head would block gradients to everything below it
    m.train()
    logits = m(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_init_is_timm_like() -> None:
    m = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=10)
    assert m.head.weight.abs().max() == 0 and m.head.bias.abs().max() == 0
    w = m.blocks[0].mlp.fc1.weight
    assert 0.018 < w.std().item() < 0.022 and w.abs().mean().item() < 0.02  # trunc-normal(std 0.02)
    assert m.blocks[0].attn.qkv.bias.abs().max() == 0
    assert m.cls_token.abs().max().item() < 1e-4
    assert m.no_weight_decay() == {"pos_embed", "cls_token", "reg_token"}  # timm's names


# Exact counts, also checked against timm below; the CIFAR presets have 10 classes, the 224 ones 1000.
PINNED_PARAMS = {
    "vit_cifar_tiny": 2_697_610,
    "vit_cifar_small": 8_335_882,
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_are_pinned(name: str) -> None:
    num_classes = 10 if "cifar" in name else 1000
    with torch.device("meta"):
        ours = create_model(name, num_classes=num_classes)
        ref = TimmViT(**PRESETS[name].replace(num_classes=num_classes).timm_kwargs())
    n = sum(p.numel() for p in ours.parameters())
    assert n == PINNED_PARAMS[name]
    assert n == sum(p.numel() for p in ref.parameters())


def test_named_timm_architectures_match_timm_registry() -> None:
    for name in ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"):
        with torch.device("meta"):
            ref = timm.create_model(name, pretrained=False)
            ours = create_model(name)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_resample_pos_embed_matches_timm() -> None:
    pe = torch.randn(1, 1 + 8 * 8, 32)
    ours = resample_pos_embed(pe, (12, 12), (8, 8), num_prefix_tokens=1)
    ref = resample_abs_pos_embed(pe, [12, 12], [8, 8], num_prefix_tokens=1)
    assert ours.shape == (1, 1 + 144, 32)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours[:, :1], pe[:, :1])  # the class token's embedding is kept as is
    assert resample_pos_embed(pe, (8, 8), (8, 8)) is pe


def test_loading_weights_from_another_image_size_resamples_pos_embed() -> None:
    small = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    _randomize(small)
    big = VisionTransformer(img_size=48, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    big.load_state_dict(small.state_dict(), strict=True)
    expected = resample_abs_pos_embed(small.pos_embed.detach(), [12, 12], [8, 8], num_prefix_tokens=1)
    torch.testing.assert_close(big.pos_embed.detach(), expected)
    torch.testing.assert_close(big.blocks[0].attn.qkv.weight, small.blocks[0].attn.qkv.weight)


def test_run_time_input_size_change_equals_a_resampled_model() -> None:
    """A 32-px model fed 48-px images gives what a 48-px model with resampled weights gives."""
    small = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()
    _randomize(small)
    big = VisionTransformer(img_size=48, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()
    big.load_state_dict(small.state_dict())
    x = torch.randn(2, 3, 48, 40)  # non-square too
    big2 = VisionTransformer(img_size=(48, 40), patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    big2.load_state_dict(small.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(small(x), big2.eval()(x), atol=1e-5, rtol=1e-5)
        sq = torch.randn(2, 3, 48, 48)
        torch.testing.assert_close(small(sq), big(sq), atol=1e-5, rtol=1e-5)


def test_bad_input_size_and_arguments_raise_clear_errors() -> None:
    m = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        m(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="needs class_token=True"):
        VisionTransformer(class_token=False, global_pool="token")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        VisionTransformer(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown model preset"):
        create_model("vit_gigantic")
    with pytest.raises(ValueError, match="patch_drop_rate must be in"):
        VisionTransformer(patch_drop_rate=1.0)


@pytest.mark.parametrize("class_token", [True, False])
def test_patch_dropout_keeps_prefix_and_a_random_subset_of_patches_in_training_only(class_token: bool) -> None:
    kw = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5, class_token=class_token)
    if not class_token:
        kw["global_pool"] = "avg"
    plain = VisionTransformer(**kw)
    _randomize(plain)
    dropping = VisionTransformer(**kw, patch_drop_rate=0.5)
    dropping.load_state_dict(plain.state_dict(), strict=True)  # no extra weights: timm state dicts still fit
    x = torch.randn(4, 3, 32, 32)
    P = 1 if class_token else 0
    with torch.no_grad():
        full = plain.tokens_and_distances(x)[0]  # (4, P + 64, 32): no dropping (rate 0)
        dropping.train()
        kept = dropping.tokens_and_distances(x)[0]  # (4, P + 32, 32)
        assert kept.shape == (4, P + 32, 32)
        torch.testing.assert_close(kept[:, :P], full[:, :P], rtol=0, atol=0)  # the class token always stays
        for b in range(4):
            # each kept token is one of that image's own patch tokens (position embedding included), none twice
            match = (kept[b, P:, None, :] == full[b, None, P:, :]).all(-1)  # (32, 64)
            assert match.sum(1).tolist() == [1] * 32
            assert match.any(0).sum().item() == 32
        assert not torch.equal(dropping.tokens_and_distances(x)[0], kept)  # a fresh subset per call
        dropping.eval()  # evaluation sees every token: the same logits as the model without dropout
        torch.testing.assert_close(dropping(x), plain.eval()(x), rtol=0, atol=0)


def test_patch_dropout_matches_timm_argument_and_eval_logits() -> None:
    kw = dict(PARITY_SHAPES["cifar_32_p4_cls"], patch_drop_rate=0.25)
    ref = TimmViT(**kw).eval()
    _randomize(ref)
    ours = VisionTransformer(**kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-4
        ours.train()
        assert ours.forward_features(x).shape == (2, 1 + 48, 96)  # 64 patches, a quarter dropped


@pytest.mark.parametrize(
    "kw",
    [dict(reg_tokens=4), dict(reg_tokens=4, no_embed_class=True), dict(reg_tokens=2, class_token=False,
                                                                        global_pool="avg", no_embed_class=True)],
)  # fmt: skip
def test_register_tokens_load_timm_weights_strictly_with_equal_logits(kw: dict) -> None:
    shape = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=7, **kw)
    ref = TimmViT(**shape).eval()
    _randomize(ref)
    ours = VisionTransformer(**shape).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
        _, attns = ours.forward_with_attention(x)
    P = (0 if kw.get("class_token") is False else 1) + kw["reg_tokens"]
    assert ours.num_prefix_tokens == P and attns[0].shape[-1] == P + 64
    assert "reg_token" in ours.no_weight_decay()


def test_sincos_position_embeddings_are_fixed_and_timm_loads_them() -> None:
    from vit_app.model import sincos_2d

    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, pos_embed_init="sincos")
    assert not m.pos_embed.requires_grad
    torch.testing.assert_close(m.pos_embed[:, 1:], sincos_2d((4, 4), 32))
    table = sincos_2d((2, 3), 8)[0]  # rows: (y, x) in row-major order; columns: sin x, cos x, sin y, cos y
    freqs = torch.tensor([1.0, 1e-4])  # 1 / 10000 ** (i / (dim / 4 - 1))
    torch.testing.assert_close(table[4, :2], freqs.sin())  # (y=1, x=1)
    torch.testing.assert_close(table[5, :2], (2 * freqs).sin())  # (y=1, x=2)
    torch.testing.assert_close(table[5, 4:6], freqs.sin())
    ref = TimmViT(**m.config.timm_kwargs())
    ref.load_state_dict(m.state_dict(), strict=True)  # timm sees an ordinary (learned) position embedding
    with pytest.raises(ValueError, match="divisible by 4"):
        VisionTransformer(embed_dim=30, num_heads=3, pos_embed_init="sincos")


def test_mimetic_init_makes_attention_start_near_the_identity() -> None:
    torch.manual_seed(0)
    m = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=1, num_heads=4, attn_init="mimetic")
    D, hd = 64, 16
    w = m.blocks[0].attn.qkv.weight.view(3, D, D)
    qk = w[0, :hd].T @ w[1, :hd]  # head 0's W_q W_k^T (D x D): a rank-16 part of 0.7 Z + 0.7 I
    assert qk.diag().mean() > 3 * (qk - torch.diag(qk.diag())).abs().mean()
    vo = w[2].T @ m.blocks[0].attn.proj.weight.T  # W_v W_o = 0.4 Z - 0.4 I exactly
    torch.testing.assert_close(vo.diag().mean(), torch.tensor(-0.4), atol=0.05, rtol=0)
    plain = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=1, num_heads=4)
    assert set(m.state_dict()) == set(plain.state_dict())  # only values differ: timm weights, timm names


def test_locality_slopes_span_one_patch_to_half_the_grid_with_one_global_head() -> None:
    from vit_app.model import locality_slopes

    torch.testing.assert_close(locality_slopes(4, (8, 8)), torch.tensor([1.0, 0.25, 0.0625, 0.0]))
    torch.testing.assert_close(locality_slopes(3, (14, 14)), torch.tensor([1.0, 1 / 49, 0.0]))
    torch.testing.assert_close(locality_slopes(2, (8, 8)), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(locality_slopes(1, (8, 8)), torch.tensor([0.0]))


LOCAL_SHAPES = [
    dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=3),
    dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=3, class_token=False,
         global_pool="avg", reg_tokens=2),
]  # fmt: skip


@pytest.mark.parametrize("kw", LOCAL_SHAPES)
def test_locality_bias_is_minus_slope_times_squared_patch_distance(kw: dict) -> None:
    """Block 0's map recomputed by hand: softmax(q k^T / sqrt(d) - slope_h * |p_i - p_j|^2), 0 on prefix tokens."""
    m = VisionTransformer(**kw, attn_locality=True).eval()
    _randomize(m)
    with torch.no_grad():
        m.blocks[0].attn.locality.copy_(torch.tensor([2.0, 0.5, 0.1, 0.0]))
    x = torch.randn(2, 3, 32, 32)
    P = m.num_prefix_tokens
    grid = [(r, c) for r in range(4) for c in range(4)]  # 32 px / patch 8: a 4 x 4 grid in raster order
    d2 = torch.zeros(P + 16, P + 16)
    for i, (ri, ci) in enumerate(grid):
        for j, (rj, cj) in enumerate(grid):
            d2[P + i, P + j] = (ri - rj) ** 2 + (ci - cj) ** 2
    with torch.no_grad():
        _, attns = m.forward_with_attention(x)
        h = m.blocks[0].norm1(m.tokens_and_distances(x)[0])
        q, k, _ = m.blocks[0].attn.qkv(h).reshape(2, P + 16, 3, 4, 8).permute(2, 0, 3, 1, 4)
        slopes = torch.tensor([2.0, 0.5, 0.1, 0.0]).view(1, 4, 1, 1)
        expected = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5 - slopes * d2, dim=-1)
    torch.testing.assert_close(attns[0], expected, atol=1e-6, rtol=1e-5)
    assert expected[0, 0, P + 5, P + 5] > expected[0, 3, P + 5, P + 5]  # the steep head keeps more to itself


def test_set_fused_attn_forces_a_path_and_none_restores_the_measured_rule(monkeypatch) -> None:  # noqa: ANN001
    m = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()
    calls: list[int] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    monkeypatch.setattr(vit_model, "explicit_attention_faster", lambda _x, _training: True)  # the rule: explicit
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ruled = m(x)
        assert calls == []
        m.set_fused_attn(True)  # SDPA in both blocks, whatever the rule says
        forced = m(x)
        assert len(calls) == 2
        m.set_fused_attn(None)
        m(x)
        assert len(calls) == 2  # back on the rule
        monkeypatch.setattr(vit_model, "explicit_attention_faster", lambda _x, _training: False)
        m.set_fused_attn(False)
        m(x)
        assert len(calls) == 2  # explicit, though the rule now says SDPA
    torch.testing.assert_close(forced, ruled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", LOCAL_SHAPES)
def test_locality_fused_and_explicit_paths_agree_and_zero_slopes_are_the_plain_model(kw: dict) -> None:
    m = VisionTransformer(**{**kw, "img_size": 48, "patch_size": 4}, attn_locality=True).eval()
    _randomize(m)
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        fused = m(x)
        m.set_fused_attn(False)
        explicit = m(x)
        m.set_fused_attn(None)
    assert not explicit_attention_faster(torch.zeros(3, fused.shape[0] + 144, 32), training=False)
    torch.testing.assert_close(fused, explicit, atol=1e-5 * max(1.0, fused.abs().max().item()), rtol=0)
    plain = VisionTransformer(**{**kw, "img_size": 48, "patch_size": 4}).eval()
    state = {k: v for k, v in m.state_dict().items() if not k.endswith("attn.locality")}
    plain.load_state_dict(state, strict=True)  # the slopes are the only weights it adds
    with torch.no_grad():
        assert (m(x) - plain(x)).abs().max() > 1e-3  # the bias changes the outputs ...
        for blk in m.blocks:
            blk.attn.locality.zero_()
        torch.testing.assert_close(m(x), plain(x), atol=1e-5, rtol=1e-5)  # ... and with zero slopes it is gone


def test_locality_follows_the_kept_patches_under_patch_dropout() -> None:
    """Each kept token's distances are those of the patch it came from (the position embedding identifies it)."""
    kw = dict(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=5, attn_locality=True)
    m = VisionTransformer(**kw, patch_drop_rate=0.5)
    _randomize(m)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        m.eval()
        full, d2_full = m.tokens_and_distances(x)  # (3, 65, 32), (1, 65, 65)
        m.train()
        kept, d2 = m.tokens_and_distances(x)  # (3, 33, 32), (3, 33, 33)
    assert d2_full.shape == (1, 65, 65) and d2.shape == (3, 33, 33)
    assert d2_full[0, 1 + 9, 1 + 27].item() == 2**2 + 2**2  # patches (1, 1) and (3, 3) of the 8 x 8 grid
    for b in range(3):
        src = (kept[b, 1:, None, :] == full[b, None, 1:, :]).all(-1).float().argmax(1)  # (32,): where each came from
        torch.testing.assert_close(d2[b, 1:, 1:], d2_full[0, 1:, 1:][src][:, src], rtol=0, atol=0)
        assert d2[b, 0].abs().sum() == 0 and d2[b, :, 0].abs().sum() == 0  # the class token has no position


def test_locality_slopes_are_learned_on_adamw_without_weight_decay() -> None:
    from vit_app.optim import build_optimizer

    m = VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, num_classes=5,
                          class_token=False, global_pool="avg", attn_locality=True)  # fmt: skip
    _randomize(m)  # (with a class token read out, the last block's slopes would get none: its row has no bias)
    m.train()
    m(torch.randn(2, 3, 32, 32)).square().sum().backward()
    for blk in m.blocks:
        assert blk.attn.locality.grad is not None and blk.attn.locality.grad.abs().sum() > 0
    opt = build_optimizer(m, "muon", 1e-3, 0.1)
    slopes = {id(blk.attn.locality) for blk in m.blocks}
    for group in opt.param_groups:
        if slopes & {id(p) for p in group["params"]}:
            assert not group.get("muon") and group["weight_decay"] == 0.0
    timm_names = set(TimmViT(**m.config.timm_kwargs()).state_dict())
    assert set(m.state_dict()) - timm_names == {f"blocks.{i}.attn.locality" for i in range(2)}
    assert m.config.timm_inexpressible() == ["attn_locality"]
    assert (
        VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3).config.timm_inexpressible()
        == []
    )
    with pytest.raises(ValueError, match="attn_locality must be true or false"):
        VisionTransformer(attn_locality="yes")


@pytest.mark.parametrize("dim", [64, 24])  # more outputs than the 48 patch inputs, and fewer
def test_whitened_patch_embed_equalises_the_leading_components(dim: int) -> None:
    """Through the real forward: the outputs are centred, their covariance's nonzero eigenvalues are
    c * lambda / (lambda + eps') for the min(dim, 48) leading patch components (equal where lambda >> eps'), and
    their mean variance is that of timm's init (0.02^2 * total pixel variance)."""
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.randn(64, 3, 8, 8, generator=g), size=16, mode="bilinear")  # correlated pixels
    images = smooth * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 0.05 * torch.randn(64, 3, 16, 16, generator=g)
    embed = PatchEmbed(16, 4, 3, dim)
    whiten_patch_embed(embed, images)
    with torch.no_grad():
        y = embed(images)[0].reshape(-1, dim).double()  # (B * N, D)
    patches = F.unfold(images.double(), 4, stride=4).transpose(1, 2).reshape(-1, 48)
    cov = torch.cov(patches.T)
    lam = torch.linalg.eigvalsh(cov).flip(0)[: min(dim, 48)]
    shape = lam / (lam + 0.01 * lam.mean())
    want = shape * (0.02**2 * cov.trace() * dim / shape.sum())  # scaled to the mean variance of timm's init
    got = torch.linalg.eigvalsh(torch.cov(y.T)).flip(0)[: min(dim, 48)]
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-9)
    assert y.mean(0).abs().max() < 1e-3 * y.std(0).min()  # centred by the bias
    if dim > 48:
        assert torch.linalg.eigvalsh(torch.cov(y.T)).flip(0)[48:].abs().max() < 1e-6 * want.max()  # rank 48
    with pytest.raises(ValueError, match="needs more than 48 patches, got 16"):
        whiten_patch_embed(embed, images[:1])
