"""Optimiser groups, schedule, precision choice, the non-finite-loss guard and test-time augmentation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vit_app.errors import ConfigError
from vit_app.module import ViTClassifier
from vit_app.optim import param_groups
from vit_app.precision import choose_precision
from vit_app.schedule import warmup_decay
from vit_app.tta import tta_logits


def test_warmup_decay_values() -> None:
    assert warmup_decay(0, 10, 110) == pytest.approx(0.1)
    assert warmup_decay(9, 10, 110) == pytest.approx(1.0)
    assert warmup_decay(10, 10, 110) == pytest.approx(1.0)
    assert warmup_decay(60, 10, 110) == pytest.approx(0.5)
    assert warmup_decay(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_decay(50, 10, 110, progress=0.5) == pytest.approx(0.5)  # time-based position
    assert warmup_decay(50, 10, 110, progress=2.0) == pytest.approx(0.0)
    assert warmup_decay(35, 10, 110, shape="linear") == pytest.approx(0.75)
    assert warmup_decay(35, 10, 110, min_ratio=0.2, shape="linear") == pytest.approx(0.2 + 0.8 * 0.75)
    assert warmup_decay(50, 10, 110, shape="linear", hold=0.4) == pytest.approx(1.0)  # held to 40 % of 100 steps
    assert warmup_decay(80, 10, 110, shape="linear", hold=0.4) == pytest.approx(0.5)  # halfway down 40 % -> 100 %
    assert warmup_decay(80, 10, 110, hold=0.4) == pytest.approx(0.5)  # the cosine's midpoint
    assert warmup_decay(0, 0, 10, progress=0.7, shape="linear", hold=0.4) == pytest.approx(0.5)
    assert warmup_decay(0, 0, 10, progress=1.3, shape="linear", hold=0.4) == pytest.approx(0.0)


def test_lr_schedule_and_hold_are_checked() -> None:
    with pytest.raises(ConfigError, match="model.lr_schedule must be one of cosine, linear, got 'step'"):
        ViTClassifier(lr_schedule="step")  # type: ignore[arg-type]
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ConfigError, match=r"model.lr_hold must be in \[0, 1\)"):
            ViTClassifier(lr_hold=bad)
    assert ViTClassifier(lr_schedule="linear", lr_hold=0.5).hparams.lr_hold == 0.5


def test_weight_decay_groups() -> None:
    m = ViTClassifier(arch="vit_cifar_tiny", depth=1, embed_dim=32, num_heads=2).model
    decay, no_decay = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "blocks.0.attn.qkv.bias"} <= nd
    assert d == {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                 "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "head.weight"}  # fmt: skip
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_precision_choice_on_this_machine() -> None:
    precision, reason = choose_precision("cpu")
    assert precision in ("32-true", "bf16-mixed") and reason
    if torch.cuda.is_available():
        assert choose_precision("auto")[0] in ("bf16-mixed", "16-mixed")


def test_model_preset_and_overrides() -> None:
    m = ViTClassifier(arch="vit_cifar_tiny", num_classes=7, img_size=32, depth=2, class_token=False)
    assert m.model_config.depth == 2 and m.model_config.global_pool == "avg"
    assert m.model.head.out_features == 7
    with pytest.raises(ConfigError, match="model.arch"):
        ViTClassifier(arch="nope")
    with pytest.raises(ConfigError, match="class_names"):
        ViTClassifier(num_classes=3, class_names=["a", "b"])


def test_non_finite_loss_stops_with_advice() -> None:
    m = ViTClassifier(arch="vit_cifar_tiny", depth=1, embed_dim=32, num_heads=2)
    with torch.no_grad():
        m.model.head.weight.fill_(math.nan)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    m.log = lambda *a, **k: None  # no trainer attached
    with pytest.raises(FloatingPointError, match="lower model.lr"):
        m.training_step((x, y), 0)


@pytest.mark.parametrize("bad", [30, 32, 36, 0, -4, True])
def test_low_res_size_is_checked(bad: int) -> None:
    rule = r"model.low_res_size must be a multiple of the patch size \(4\) below img_size \(32\)"
    with pytest.raises(ConfigError, match=rule):
        ViTClassifier(patch_size=4, img_size=32, low_res_size=bad)
    with pytest.raises(ConfigError, match="model.low_res_end"):
        ViTClassifier(patch_size=4, img_size=32, low_res_size=24, low_res_end=1.5)
    assert ViTClassifier(patch_size=4, img_size=32, low_res_size=24).low_res


def test_patch_drop_end_is_checked() -> None:
    with pytest.raises(ConfigError, match="model.patch_drop_end"):
        ViTClassifier(patch_drop_rate=0.5, patch_drop_end=1.5)
    with pytest.raises(ConfigError, match="model.patch_drop_rate"):
        ViTClassifier(patch_drop_rate=1.5)
    m = ViTClassifier(arch="vit_cifar_tiny", depth=1, embed_dim=32, num_heads=2, patch_drop_rate=0.5)
    assert m.model.patch_drop_rate == 0.5 and m.model_config.patch_drop_rate == 0.5


def test_muon_settings_reach_the_optimiser_and_are_checked() -> None:
    m = ViTClassifier(arch="vit_cifar_tiny", depth=1, optimizer="muon", muon_momentum=0.9, muon_ns_steps=3)
    opt = m.build_optimizer()
    muon_groups = [g for g in opt.param_groups if g.get("muon")]
    assert muon_groups and all(g["momentum"] == 0.9 and g["ns_steps"] == 3 for g in muon_groups)
    with pytest.raises(ConfigError, match=r"model.muon_momentum must be in \[0, 1\), got 1.0"):
        ViTClassifier(optimizer="muon", muon_momentum=1.0)
    with pytest.raises(ConfigError, match="model.muon_ns_steps must be 1 or more, got 0"):
        ViTClassifier(optimizer="muon", muon_ns_steps=0)
    kernel = m.model.patch_embed.proj.weight
    assert not any(p is kernel for g in muon_groups for p in g["params"])  # AdamW steps it by default
    m = ViTClassifier(arch="vit_cifar_tiny", depth=1, optimizer="muon", muon_embed=True)
    kernel = m.model.patch_embed.proj.weight
    assert any(p is kernel for g in m.build_optimizer().param_groups if g.get("muon") for p in g["params"])
    with pytest.raises(ConfigError, match="model.muon_embed must go with model.optimizer muon, got True"):
        ViTClassifier(optimizer="adamw", muon_embed=True)
    opt = ViTClassifier(arch="vit_cifar_tiny", depth=1, optimizer="muon", lr=2e-3, muon_lr_scale=1.5).build_optimizer()
    assert [g["lr"] for g in opt.param_groups if g.get("muon")] == [pytest.approx(3e-3)]  # the one Muon group
    assert {g["lr"] for g in opt.param_groups if not g.get("muon")} == {2e-3}
    with pytest.raises(ConfigError, match="model.muon_lr_scale must go with model.optimizer muon, got 2.0"):
        ViTClassifier(optimizer="adamw", muon_lr_scale=2.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="model.muon_lr_scale must be a finite number > 0"):
            ViTClassifier(optimizer="muon", muon_lr_scale=bad)
    m = ViTClassifier(arch="vit_cifar_tiny", depth=2, optimizer="muon", muon_split_qkv=True)
    qkv = {id(b.attn.qkv.weight) for b in m.model.blocks}
    split = [p for g in m.build_optimizer().param_groups if g.get("split") == 3 for p in g["params"]]
    assert {id(p) for p in split} == qkv and len(split) == 2
    with pytest.raises(ConfigError, match="model.muon_split_qkv must go with model.optimizer muon, got True"):
        ViTClassifier(optimizer="adamw", muon_split_qkv=True)
    opt = ViTClassifier(arch="vit_cifar_tiny", depth=2, optimizer="muon", normuon=True).build_optimizer()
    assert opt._muon.param_groups[0]["normuon_beta2"] == 0.95  # type: ignore[attr-defined]
    plain = ViTClassifier(arch="vit_cifar_tiny", depth=2, optimizer="muon").build_optimizer()
    assert plain._muon.param_groups[0]["normuon_beta2"] is None  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="model.normuon must go with model.optimizer muon, got True"):
        ViTClassifier(optimizer="adamw", normuon=True)


def test_patch_embed_init_is_checked() -> None:
    with pytest.raises(ConfigError, match="model.patch_embed_init must be 'trunc_normal' or 'whiten', got 'pca'"):
        ViTClassifier(patch_embed_init="pca")
    with pytest.raises(ConfigError, match="model.patch_embed_init must stay 'trunc_normal' with model.pretrained"):
        ViTClassifier(patch_embed_init="whiten", pretrained="local-dir:/nowhere")
    m = ViTClassifier(patch_embed_init="whiten")
    with pytest.raises(ConfigError, match="model.patch_embed_init 'whiten' needs the training images at fit time"):
        m.whitening_images(None)


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror() -> None:
    def left_half(x: torch.Tensor) -> torch.Tensor:  # a "model" that sees only the left half of each image
        return x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3)).unsqueeze(-1) * torch.tensor([1.0, -1.0])

    x = torch.randn(5, 3, 8, 8)
    right = x[..., 4:].mean(dim=(1, 2, 3)).unsqueeze(-1) * torch.tensor([1.0, -1.0])
    torch.testing.assert_close(tta_logits(left_half, x, "none"), left_half(x))
    torch.testing.assert_close(tta_logits(left_half, x, "flip"), 0.5 * (left_half(x) + right))
    with pytest.raises(ValueError, match="unknown test-time augmentation 'rotate'; choose one of: none, flip"):
        tta_logits(left_half, x, "rotate")
    with pytest.raises(ConfigError, match="model.eval_tta must be one of none, flip, flip_shift, got 'rotate'"):
        ViTClassifier(eval_tta="rotate")  # type: ignore[arg-type]


def test_eval_tta_reaches_validate_and_test_but_not_the_validation_inside_fit() -> None:
    from types import SimpleNamespace

    torch.manual_seed(0)
    m = {
        t: ViTClassifier(arch="vit_cifar_tiny", depth=1, embed_dim=32, num_heads=2, eval_tta=t)
        for t in ("none", "flip", "flip_shift")
    }
    torch.nn.init.normal_(m["none"].model.head.weight)  # the head starts at zero: give the logits something to say
    for t in ("flip", "flip_shift"):
        m[t].model.load_state_dict(m["none"].model.state_dict())
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    with torch.no_grad():
        net = m["none"].model.eval()
        plain = net(x)
        want = {
            "none": F.cross_entropy(plain, y),
            "flip": F.cross_entropy(0.5 * (plain + net(x.flip(-1))), y),
            "flip_shift": F.cross_entropy(tta_logits(net, x, "flip_shift", 1), y),  # patch 4: 1 px (test_tta)
        }
    pairs = (("none", "flip"), ("none", "flip_shift"), ("flip", "flip_shift"))
    assert min(abs(want[a] - want[b]) for a, b in pairs) > 1e-4  # the settings can be told apart
    for fn in ("validate", "test", "fit"):
        for t in ("none", "flip", "flip_shift"):
            logged: dict[str, torch.Tensor] = {}
            m[t].eval()
            m[t]._trainer = SimpleNamespace(state=SimpleNamespace(fn=fn))  # what the step reads of its trainer
            m[t].log = lambda name, value, _logged=logged, **k: _logged.__setitem__(name, value)
            with torch.no_grad():
                (m[t].test_step if fn == "test" else m[t].validation_step)((x, y), 0)
            expected = want["none"] if fn == "fit" else want[t]  # fit's validation is plain: the budget trains
            torch.testing.assert_close(logged[f"{'test' if fn == 'test' else 'val'}/loss"], expected, rtol=1e-4,
                                       atol=1e-5, msg=f"{fn} {t}")  # fmt: skip
            m[t]._trainer = None
