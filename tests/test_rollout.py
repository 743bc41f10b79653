"""Rollout against hand-computed cases and a float64 reference; per-image discard; grad-rollout layer pairing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_app.explain.engine import explain
from vit_app.explain.rollout import attention_rollout, discard_lowest, grad_rollout, head_maps, layer_rollouts
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


def test_grad_rollout_pairs_each_gradient_with_its_own_layer() -> None:
    model = _tiny_model()
    x = torch.randn(3, 3, 32, 32)
    ex = explain(model, x, "grad-rollout", target=2)
    # independent reference: keep every returned map's .grad after one backward pass
    logits, attns = model.forward_with_attention(x)
    for a in attns:
        a.retain_grad()
    logits[:, 2].sum().backward()
    grads = [a.grad for a in attns]
    expected = grad_rollout([a.detach() for a in attns], grads)
    torch.testing.assert_close(ex.maps, expected)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    mismatched = grad_rollout([a.detach() for a in attns], grads[::-1])
    assert not torch.allclose(mismatched, expected)  # a pairing mistake would show
    with pytest.raises(ValueError, match="gradients"):
        grad_rollout(attns, grads[:-1])


def test_grad_rollout_is_class_specific_and_explain_shapes() -> None:
    model = _tiny_model()
    x = torch.randn(2, 3, 32, 32)
    m0 = explain(model, x, "grad-rollout", target=0).maps
    m1 = explain(model, x, "grad-rollout", target=1).maps
    assert m0.shape == (2, 4, 4) and not torch.allclose(m0, m1)
    ex = explain(model, x, "rollout", with_layers=True, with_heads=True, layer=1)
    assert len(ex.layers) == 3 and ex.heads.shape == (2, 2, 4, 4)
    torch.testing.assert_close(ex.layers[-1], ex.maps)
    att = explain(model, x, "attention", layer=1)
    torch.testing.assert_close(att.maps, ex.heads.mean(1))
    torch.testing.assert_close(ex.probs, torch.softmax(model(x), -1))
    with pytest.raises(ValueError, match="layer 5"):
        explain(model, x, "attention", layer=5)
