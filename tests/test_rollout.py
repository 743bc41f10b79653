"""Rollout and relevance against hand-computed cases and a float64 reference; per-image discard; gradient-layer
pairing; register tokens; attention-aware LRP; a model whose right answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_app.explain.engine import METHODS, explain
from vit_app.explain.lrp import lrp_maps, relevance_forward
from vit_app.explain.rollout import attention_rollout, discard_lowest, head_maps, layer_rollouts, relevance_rollout
from vit_app.model import VisionTransformer

A = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
B = torch.tensor([[0.2, 0.4, 0.4], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])


def _one(m: torch.Tensor) -> torch.Tensor:
    return m.view(1, 1, 3, 3)  # (batch 1, 1 head, T=3: class token + a 1x2 patch grid)


def test_single_layer_by_hand() -> None:
    # 0.5 A + 0.5 I = [[.75, .15, .1], ...]: the class-token row over the two patches is [.15, .1]
    out = attention_rollout([_one(A)], grid=(1, 2))
    torch.testing.assert_close(out, torch.tensor([[[0.15, 0.10]]]))


def test_two_layers_by_hand_first_layer_first() -> None:
    # (0.5 B + 0.5 I) @ (0.5 A + 0.5 I), class row: 0.6*[.75,.15,.1] + 0.2*[.05,.8,.15] + 0.2*[.1,.1,.8]
    out = attention_rollout([_one(A), _one(B)], grid=(1, 2))
    torch.testing.assert_close(out, torch.tensor([[[0.27, 0.25]]]))
    swapped = attention_rollout([_one(B), _one(A)], grid=(1, 2))
    assert not torch.allclose(out, swapped)  # order matters, so the test above pins it


def test_head_fusion_by_hand() -> None:
    D = torch.tensor([[0.1, -0.1, 0.0], [0.0, 0.1, -0.1], [-0.1, 0.0, 0.1]])
    heads = torch.stack([A + D, A - D]).unsqueeze(0)  # (1, 2, 3, 3), mean over heads = A
    torch.testing.assert_close(attention_rollout([heads], "mean", grid=(1, 2)), torch.tensor([[[0.15, 0.10]]]))
    # max over heads: [[.6,.3,.2],[.1,.7,.4],[.3,.2,.7]] -> + I/2 -> rows renormalised; class row [.3, .2] / (1.1+... )
    mx = torch.maximum(A + D, A - D)
    a = 0.5 * mx + 0.5 * torch.eye(3)
    a = a / a.sum(-1, keepdim=True)
    torch.testing.assert_close(attention_rollout([heads], "max", grid=(1, 2)), a[0, 1:].view(1, 1, 2))
    mn = torch.minimum(A + D, A - D)
    a = 0.5 * mn + 0.5 * torch.eye(3)
    a = a / a.sum(-1, keepdim=True)
    torch.testing.assert_close(attention_rollout([heads], "min", grid=(1, 2)), a[0, 1:].view(1, 1, 2))


def test_discard_by_hand_never_touches_the_class_token() -> None:
    # patch block of A is [[.6, .3], [.2, .6]]: discarding half drops .2 and .3, not the class row/column
    d = discard_lowest(A.view(1, 3, 3), 0.5, num_prefix_tokens=1)[0]
    torch.testing.assert_close(d, torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.0], [0.2, 0.0, 0.6]]))
    # rows then renormalise with keepdim: row 1 = [.05, .8, 0] / .85
    out = layer_rollouts([_one(A), _one(B)], discard_ratio=0.5, grid=(1, 2))
    a1 = 0.5 * d + 0.5 * torch.eye(3)
    a1 = a1 / a1.sum(-1, keepdim=True)
    torch.testing.assert_close(a1[1], torch.tensor([0.05, 0.8, 0.0]) / 0.85)
    torch.testing.assert_close(out[0], a1[0, 1:].view(1, 1, 2))


def _softmax_maps(L: int, Bn: int, H: int, T: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(torch.randn(Bn, H, T, T, generator=g) * 2, dim=-1) for _ in range(L)]


def _reference(maps: list[np.ndarray], fusion: str, ratio: float, P: int) -> np.ndarray:
    """Straightforward float64 rollout, one image at a time, written independently of the library."""
    Bn, _, T, _ = maps[0].shape
    out = []
    for b in range(Bn):
        result = np.eye(T)
        for m in maps:
            a = {"mean": m[b].mean(0), "max": m[b].max(0), "min": m[b].min(0)}[fusion].astype(np.float64)
            if ratio > 0:
                block = a[P:, P:].copy()
                k = int(block.size * ratio)
                flat_idx = np.argsort(block, axis=None, kind="stable")[:k]
                block.flat[flat_idx] = 0.0
                a[P:, P:] = block
            a = 0.5 * a + 0.5 * np.eye(T)
            a = a / a.sum(axis=1, keepdims=True)
            result = a @ result
        row = result[0, P:] if P else result[P:, P:].mean(0)
        out.append(row)
    return np.stack(out)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.4])
@pytest.mark.parametrize("P", [1, 0])
def test_matches_float64_reference(fusion: str, ratio: float, P: int) -> None:
    T = 16 + P
    maps = _softmax_maps(L=4, Bn=3, H=3, T=T)
    got = attention_rollout(maps, fusion, ratio, num_prefix_tokens=P)  # (3, 4, 4)
    ref = _reference([m.double().numpy() for m in maps], fusion, ratio, P)
    np.testing.assert_allclose(got.reshape(3, -1).numpy(), ref, atol=1e-6, rtol=1e-5)


def test_uniform_attention_gives_a_uniform_map() -> None:
    T = 1 + 49
    maps = [torch.full((2, 4, T, T), 1.0 / T) for _ in range(6)]
    out = attention_rollout(maps)
    assert out.shape == (2, 7, 7)
    torch.testing.assert_close(out, torch.full_like(out, out[0, 0, 0].item()))


def test_each_image_gets_its_own_discard() -> None:
    maps = _softmax_maps(L=3, Bn=5, H=2, T=17, seed=3)
    together = attention_rollout(maps, discard_ratio=0.5)
    for i in range(5):
        alone = attention_rollout([m[i : i + 1] for m in maps], discard_ratio=0.5)
        torch.testing.assert_close(together[i : i + 1], alone)
    shuffled = attention_rollout([m.flip(0) for m in maps], discard_ratio=0.5)
    torch.testing.assert_close(shuffled.flip(0), together)


def test_head_maps_and_bad_grids() -> None:
    maps = _softmax_maps(L=1, Bn=2, H=3, T=1 + 6)[0]
    hm = head_maps(maps, 1, grid=(2, 3))
    torch.testing.assert_close(hm, maps[:, :, 0, 1:].reshape(2, 3, 2, 3))
    with pytest.raises(ValueError, match="square grid"):
        attention_rollout([maps])
    with pytest.raises(ValueError, match="does not hold"):
        attention_rollout([maps], grid=(2, 2))


def _tiny_model() -> VisionTransformer:
    torch.manual_seed(0)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=4).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def test_relevance_by_hand() -> None:
    # one layer: R = I + (A * G)^+ averaged over heads; the class row over the patches
    attn = A.view(1, 1, 3, 3)
    grad = torch.tensor([[1.0, -1.0, 2.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]).view(1, 1, 3, 3)
    out = relevance_rollout([attn], [grad], grid=(1, 2))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.4]]]))  # (0.3 * -1)^+ = 0, 0.2 * 2 = 0.4
    # two layers, first layer first: row 0 of (I + C2)(I + C1)
    c1 = (A * grad[0, 0]).clamp_min(0)
    c2 = (B * grad[0, 0].T).clamp_min(0)
    expected = ((torch.eye(3) + c2) @ (torch.eye(3) + c1))[0, 1:].view(1, 1, 2)
    got = relevance_rollout([attn, B.view(1, 1, 3, 3)], [grad, grad[0, 0].T.reshape(1, 1, 3, 3)], grid=(1, 2))
    torch.testing.assert_close(got, expected)


def test_register_tokens_are_skipped_and_the_class_row_is_read() -> None:
    # T = class token + 2 registers + 2 patches
    a = torch.softmax(torch.randn(1, 1, 5, 5), -1)
    hm = head_maps(a, num_prefix_tokens=3, grid=(1, 2), cls=True)
    torch.testing.assert_close(hm[0, 0, 0], a[0, 0, 0, 3:])
    no_cls = head_maps(a, num_prefix_tokens=2, grid=(1, 3), cls=False)  # 2 registers, no class token
    torch.testing.assert_close(no_cls[0, 0, 0], a[0, 0, 2:, 2:].mean(0))
    ref = attention_rollout([a], num_prefix_tokens=3, grid=(1, 2))
    layer = 0.5 * a[0, 0] + 0.5 * torch.eye(5)
    torch.testing.assert_close(ref[0, 0], (layer / layer.sum(-1, keepdim=True))[0, 3:])


def _tiny_model() -> VisionTransformer:
    torch.manual_seed(0)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=4).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def test_relevance_pairs_each_gradient_with_its_own_layer() -> None:
    model = _tiny_model()
    x = torch.randn(3, 3, 32, 32)
    ex = explain(model, x, "relevance", target=2)
    # independent reference: keep every returned map's .grad after one backward pass
    logits, attns = model.forward_with_attention(x)
    for a in attns:
        a.retain_grad()
    logits[:, 2].sum().backward()
    grads = [a.grad for a in attns]
    expected = relevance_rollout([a.detach() for a in attns], grads)
    torch.testing.assert_close(ex.maps, expected)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    mismatched = relevance_rollout([a.detach() for a in attns], grads[::-1])
    assert not torch.allclose(mismatched, expected)  # a pairing mistake would show
    with pytest.raises(ValueError, match="gradients"):
        relevance_rollout(attns, grads[:-1])
    torch.testing.assert_close(explain(model, x, "grad-rollout", target=2).maps, ex.maps)  # the old name


def test_class_specific_methods_depend_on_the_class_and_explain_shapes() -> None:
    model = _tiny_model()
    x = torch.randn(2, 3, 32, 32)
    for method in ("relevance", "attnlrp", "cp-lrp"):
        m0 = explain(model, x, method, target=0).maps
        m1 = explain(model, x, method, target=1).maps
        assert m0.shape == (2, 4, 4) and not torch.allclose(m0, m1), method
    ex = explain(model, x, "rollout", with_layers=True, with_heads=True, layer=1)
    assert len(ex.layers) == 3 and ex.heads.shape == (2, 2, 4, 4)
    torch.testing.assert_close(ex.layers[-1], ex.maps)
    att = explain(model, x, "attention", layer=1)
    torch.testing.assert_close(att.maps, ex.heads.mean(1))
    torch.testing.assert_close(ex.probs, torch.softmax(model(x), -1))
    with pytest.raises(ValueError, match="layer 5"):
        explain(model, x, "attention", layer=5)
    with pytest.raises(ValueError, match="method must be one of"):
        explain(model, x, "gradcam")


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(reg_tokens=2), dict(class_token=False, global_pool="avg"), dict(attn_locality=True),
     dict(class_token=False, global_pool="avg", attn_locality=True)],
)  # fmt: skip
def test_lrp_forward_equals_the_model_and_cp_lrp_conserves_relevance(kw: dict) -> None:
    torch.manual_seed(1)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5, **kw).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    x = torch.randn(3, 3, 32, 32)
    _, logits = relevance_forward(m, x)
    with torch.no_grad():
        ref = m(x)
    torch.testing.assert_close(logits, ref, atol=1e-5 * max(1.0, ref.abs().max().item()), rtol=1e-5)
    # Without biases, CP-LRP's rules make the network linear in its input tokens (LayerNorm's std, GELU's ratio and
    # the attention weights held constant): gradient x input then sums exactly to the explained logit.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    target = torch.tensor([0, 3, 1])
    import torch.autograd as ag

    tokens, logits = relevance_forward(m, x, cp=True)
    (grad,) = ag.grad(logits.gather(1, target[:, None]).sum(), tokens)
    total = (tokens * grad).sum(dim=(1, 2))
    torch.testing.assert_close(total, logits.gather(1, target[:, None])[:, 0].detach(), atol=1e-4, rtol=1e-4)
    maps, _ = lrp_maps(m, x, target, cp=True)
    assert maps.shape == (3, 4, 4)


def _one_patch_model(k: int, depth: int = 2) -> VisionTransformer:
    """A ViT that can only see patch k: every query attends to patch k alone (its position embedding carries a
    direction e0 no other token ever has, and every key reads e0), so the logits depend on that patch's pixels only."""
    torch.manual_seed(0)
    D, heads = 16, 2
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=D, depth=depth, num_heads=heads, num_classes=3).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        m.patch_embed.proj.weight[0].zero_()  # no patch writes e0 ...
        m.patch_embed.proj.bias[0] = 0.0
        m.pos_embed[:, :, 0] = 0.0
        m.pos_embed[0, 1 + k, 0] = 40.0  # ... except patch k's position embedding
        m.cls_token[..., 0] = 0.0
        for blk in m.blocks:
            blk.norm1.bias.zero_()
            blk.norm1.weight.fill_(1.0)
            q, kk, _ = blk.attn.qkv.weight.view(3, D, D)
            qb, kb, _ = blk.attn.qkv.bias.view(3, D)
            q.zero_()
            qb.fill_(1.0)  # every query the same
            kk.zero_()
            kk[:, 0] = 20.0  # every key reads e0: only patch k has it
            kb.zero_()
            for lin in (blk.attn.proj, blk.mlp.fc2):  # nothing ever writes e0 into the stream
                lin.weight[0].zero_()
                lin.bias[0] = 0.0
    return m


@pytest.mark.parametrize("k", [0, 6, 15])
def test_a_model_that_sees_one_patch_gets_every_map_on_that_patch(k: int) -> None:
    m = _one_patch_model(k)
    x = torch.randn(4, 3, 32, 32)
    # the construction holds: changing any other patch leaves the logits as they are, changing patch k does not
    y = x.clone()
    r, c = divmod(k, 4)
    y[:, :, :, :] = torch.randn_like(y)
    y[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = x[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8]
    with torch.no_grad():
        torch.testing.assert_close(m(y), m(x), atol=1e-4, rtol=1e-4)
        z = x.clone()
        z[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] += 1.0
        assert (m(z) - m(x)).abs().max() > 1e-2
    for method in METHODS:
        for target in (None, 1):
            maps = explain(m, x, method, target=target, layer=0).maps.flatten(1)
            on = maps[:, k].clone()
            maps[:, k] = 0
            assert maps.abs().max() <= 1e-6, (method, target)  # nothing anywhere but the patch it sees
            if method == "relevance":  # Chefer's rule clips a negative gradient: then it shows nothing at all
                assert (on >= 0).all()
            else:
                assert (on > 0).all(), (method, target, on)
