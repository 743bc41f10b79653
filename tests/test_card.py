"""The model card: one typed record of a trained model, read by every command; the Python API built on it."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CONFIGS, REPO
from vit_app.card import CARD_KEY, ModelCard, Provenance, load_model_file, read_card
from vit_app.checkpoint import safe_load
from vit_app.classify import classify
from vit_app.cli import build_cli, main
from vit_app.data.transforms import InputSpec, build_eval_transform
from vit_app.errors import CheckpointError, ConfigError
from vit_app.inference import load_for_inference
from vit_app.model import PRESETS, VisionTransformer, ViTConfig


def _images(folder: Path, n: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 3 * i, 36, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


# --- the typed model config --------------------------------------------------------------------------------


def test_presets_are_configs_and_kwargs_build_the_same_model() -> None:
    assert all(isinstance(c, ViTConfig) for c in PRESETS.values())
    cfg = PRESETS["vit_cifar_tiny"].replace(depth=2, embed_dim=48, num_heads=3, num_classes=4, patch_size=None)
    assert cfg.depth == 2 and cfg.patch_size == 4  # None leaves a field as it is
    torch.manual_seed(0)
    a = VisionTransformer(cfg)
    torch.manual_seed(0)
    b = VisionTransformer(**cfg.to_dict())
    assert a.config == b.config == cfg
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert ViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(TypeError, match="either a ViTConfig or keyword"):
        VisionTransformer(cfg, depth=3)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(embed_dim=30, num_heads=4), "embed_dim 30 is not divisible by num_heads 4"),
        (dict(depth=0), "depth must be a whole number >= 1"),
        (dict(num_heads=-2), "num_heads must be a whole number >= 1"),
        (dict(img_size=30, patch_size=4), "img_size 30 is not a positive multiple of patch_size 4"),
        (dict(mlp_ratio=0.0), "mlp_ratio must be > 0"),
        (dict(drop_path_rate=1.0), "drop_path_rate must be in"),
        (dict(num_classes=-1), "num_classes must be a whole number >= 0"),
        (dict(global_pool="max"), "global_pool must be"),
    ],
)
def test_impossible_model_configs_are_refused_by_name(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViTConfig(**kw)
    with pytest.raises(ValueError, match="unknown model config keys: bogus"):
        ViTConfig.from_dict({**ViTConfig().to_dict(), "bogus": 1})


def test_eval_transform_equals_torchvision_pipeline_bitwise() -> None:
    from torchvision.transforms import v2

    from vit_app.data.transforms import LimitAspect

    rng = np.random.default_rng(0)
    for spec in (
        InputSpec(32, 1.0, (0.5,) * 3, (0.25,) * 3),
        InputSpec(224, 0.875),
        InputSpec(64, 0.9, interpolation="bilinear"),
    ):
        ref = v2.Compose([
            LimitAspect(), v2.Resize(round(spec.img_size / spec.crop_pct), v2.InterpolationMode(spec.interpolation)),
            v2.CenterCrop(spec.img_size), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(spec.mean), list(spec.std)),
        ])  # fmt: skip
        ours = build_eval_transform(spec)
        for w, h in ((32, 32), (40, 48), (500, 333), (7, 300), (1000, 10), (33, 31)):
            img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            assert torch.equal(ours(img), ref(img)), (spec, w, h)


# --- the card: one reader, one writer, both formats -----------------------------------------------------------


def _card(**kw) -> ModelCard:
    cfg = ViTConfig(img_size=32, patch_size=8, num_classes=3, embed_dim=16, depth=1, num_heads=2)
    return ModelCard(cfg, ["a", "b", "c"], InputSpec(32, 1.0), **kw)


def test_card_round_trips_through_plain_data_and_json() -> None:
    card = _card(temperature=1.7, provenance=Provenance.now(dataset="synthetic", seed=3, metrics={"val/acc1": 0.5}))
    d = card.to_dict()
    assert d["format"] == 2 and set(d) == {"format", "model", "class_names", "input", "temperature", "provenance",
                                           "weights"}  # fmt: skip
    buf = io.BytesIO()
    torch.save(d, buf)  # plain data: loads with weights_only
    buf.seek(0)
    assert read_card(torch.load(buf, weights_only=True)) == card
    assert read_card(json.loads(card.to_json())) == card
    with pytest.raises(ValueError, match="2 class names for a model of 3"):
        replace(card, class_names=["a", "b"])
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        card.with_temperature(0.0)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (None, "has no 'vit_app' model card"),
        ({"format": 3}, "format 3 is newer than this vit-app reads"),
        ({"format": 2, "model": {}, "class_names": []}, "damaged"),
        ({"format": 2, "model": {"depth": "x"}, "class_names": [], "input": {}}, "damaged"),
    ],
)
def test_a_damaged_or_foreign_card_is_refused_naming_the_file(stored, message: str) -> None:
    with pytest.raises(CheckpointError, match=f"some.ckpt: .*{message}"):
        read_card(stored, "some.ckpt")


def _legacy_checkpoint(tiny_ckpt: Path, path: Path, temperature: float | None = None) -> dict:
    """The tiny checkpoint rewritten in the layout vit-app wrote before the card (format 1), key for key."""
    ckpt = safe_load(tiny_ckpt)
    card = read_card(ckpt[CARD_KEY])
    old = {
        "format": 1,
        "model_config": card.model.to_dict(),
        "class_names": card.class_names,
        "eval_transform": {**card.input.to_dict()},
        "weights": "model.",
    }
    if temperature is not None:
        old["temperature"] = temperature
    ckpt[CARD_KEY] = old
    torch.save(ckpt, path)
    return ckpt


def test_a_checkpoint_in_the_old_layout_still_loads_and_calibrates(tiny_ckpt: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.ckpt"
    _legacy_checkpoint(tiny_ckpt, old, temperature=2.0)
    new, legacy = load_for_inference(tiny_ckpt), load_for_inference(old)
    assert legacy.card.model == new.card.model and legacy.card.class_names == new.card.class_names
    assert legacy.card.input == new.card.input and legacy.temperature == 2.0
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(legacy(x), new(x), rtol=0, atol=0)
    cal = tmp_path / "cal.ckpt"
    assert main(["calibrate", "--ckpt", str(old), "--num-images", "64", "--out", str(cal),
                 "--plot", str(tmp_path / "r.png")]) == 0  # fmt: skip
    stored = safe_load(cal)[CARD_KEY]
    assert stored["format"] == 2 and stored["temperature"] == load_for_inference(cal).temperature != 2.0


def test_safetensors_export_carries_the_card(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    assert main(["export", "--ckpt", str(tiny_ckpt), "--format", "safetensors", "--out", str(out)]) == 0
    card, state = load_model_file(out)
    ref = load_for_inference(tiny_ckpt).card
    assert card.model == ref.model and card.class_names == ref.class_names and card.input == ref.input
    assert card.provenance == ref.provenance and card.weights == ""
    assert set(state) == set(VisionTransformer(card.model).state_dict())


# --- every consumer reads the card; the Python API -------------------------------------------------------------


def test_python_api_predict_equals_classify_json_and_explain_equals_attention_npy(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    paths = _images(tmp_path / "imgs")
    m = load_for_inference(tiny_ckpt)
    out = io.StringIO()
    classify(m, [str(p) for p in paths], out, "json", topk=3)
    cli = [json.loads(line)["topk"] for line in out.getvalue().splitlines()]
    pil = Image.open(paths[1]).convert("RGB")
    assert m.predict([str(p) for p in paths], topk=3) == cli
    assert m.predict([paths[0], pil], topk=3) == cli[:2]  # paths and PIL images alike
    maps = m.explain([str(p) for p in paths])  # the default method, as the CLI's
    assert maps.shape == (len(paths), 4, 4)
    assert main(["attention", *map(str, paths), "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "maps")]) == 0
    for i, p in enumerate(paths):
        np.testing.assert_allclose(np.load(tmp_path / "maps" / f"{p.stem}.npy"), maps[i].numpy(), rtol=1e-6, atol=1e-7)
    logits = m(m.load(paths[:2]))
    assert logits.shape == (2, len(m.class_names))


def test_a_calibrated_checkpoint_gives_the_same_probabilities_everywhere(tiny_ckpt: Path, tmp_path: Path) -> None:
    cal = tmp_path / "cal.ckpt"
    ckpt = safe_load(tiny_ckpt)
    ckpt[CARD_KEY] = read_card(ckpt[CARD_KEY]).with_temperature(0.25).to_dict()  # a sharp temperature
    torch.save(ckpt, cal)
    paths = _images(tmp_path / "imgs", 4)
    m, raw = load_for_inference(cal), load_for_inference(tiny_ckpt)
    api = m.predict(paths, topk=6)
    assert api != raw.predict(paths, topk=6)  # the temperature changes the probabilities...
    out = io.StringIO()
    classify(m, [str(p) for p in paths], out, "json", topk=6)
    assert [json.loads(line)["topk"] for line in out.getvalue().splitlines()] == api  # ...and classify agrees
    pred = tmp_path / "pred"
    build_cli(["predict", "--ckpt_path", str(cal), "--data.predict_path", str(tmp_path / "imgs"),
               "--predict_writer.output_dir", str(pred), "--predict_writer.topk", "6",
               "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
               "--trainer.precision", "32-true"])  # fmt: skip  # the API's numerics: else bf16 on bf16 CPUs
    writer = [json.loads(line)["topk"] for line in (pred / "predictions.jsonl").read_text().splitlines()]
    assert writer == api  # so does the prediction writer
    x = m.load(paths)
    expected = torch.softmax(raw(x) / 0.25, dim=-1)
    assert api[0][0]["prob"] == pytest.approx(float(expected[0].max()), abs=1e-6)


def test_eval_commands_build_the_model_from_the_card(tiny_ckpt: Path, tmp_path: Path) -> None:
    """No config and no architecture flags; a config that describes another model is refused by name."""
    common = ["--ckpt_path", str(tiny_ckpt), "--data.synthetic_val_size", "24", "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--eval_report.enabled", "false"]  # fmt: skip
    cli = build_cli(["validate", *common])
    assert cli.model.model_config.architecture() == load_for_inference(tiny_ckpt).card.model.architecture()
    assert 0.0 <= cli.trainer.callback_metrics["val/acc1"] <= 1.0
    with pytest.raises(CheckpointError, match=r"different model than the config describes .*embed_dim: 32 vs 128"):
        build_cli(["test", "--config", str(CONFIGS / "quickstart.yaml"), *common])
    with pytest.raises(CheckpointError, match=r"depth: 2 vs 3"):
        build_cli(["test", "--model.depth", "3", *common])
    res = subprocess.run([sys.executable, "-m", "vit_app", "test", "--config", str(CONFIGS / "quickstart.yaml"),
                          *common], cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr and "embed_dim: 32 vs 128" in res.stderr


def test_eval_data_with_another_class_count_is_refused(tiny_ckpt: Path, cifar_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"the model has 6 classes \(circle.*cifar10 data has 10 \(airplane"):
        build_cli(["test", "--ckpt_path", str(tiny_ckpt), "--data.dataset", "cifar10", "--data.root",
                   str(cifar_root), "--trainer.logger", "false"])  # fmt: skip


# --- class names after a download; no Lightning at inference; precision ------------------------------------------


def _fake_cifar100(root: Path, names: list[str]) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 16)):
        data = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "fine_labels": list(rng.integers(0, 100, n))}
        (folder / split).write_bytes(pickle.dumps(data))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))


def test_class_names_are_right_after_a_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR100

    names = [f"fine_{i:02d}" for i in range(100)]  # not the placeholders: only the downloaded meta file has them
    root = tmp_path / "data"
    monkeypatch.setattr(CIFAR100, "download", lambda self: _fake_cifar100(Path(self.root), names)
                        if not (Path(self.root) / "cifar-100-python").exists() else None)  # fmt: skip
    monkeypatch.setattr(CIFAR100, "_check_integrity", lambda self: (Path(self.root) / "cifar-100-python").exists())
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda path, md5=None: Path(path).exists())
    args = ["fit", "--data.dataset", "cifar100", "--data.root", str(root), "--data.download", "true",
            "--data.num_workers", "0", "--data.batch_size", "16", "--model.embed_dim", "16", "--model.depth", "1",
            "--model.num_heads", "2", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]  # fmt: skip
    build_cli(args)
    card = load_for_inference(next(tmp_path.rglob("last.ckpt"))).card
    assert card.class_names == names and card.provenance.dataset == "cifar100"


def test_importing_inference_leaves_lightning_out() -> None:
    code = "import sys, vit_app.inference, vit_app.classify, vit_app.card; print(any(m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning')) for m in sys.modules))"  # noqa: E501
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_precision_follows_a_capability_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from vit_app import precision

    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_training_pays", lambda: True)
    assert [precision.choose_precision("auto")[0] for _ in range(3)] == ["bf16-mixed"] * 3
    monkeypatch.setattr(precision, "cpu_bf16_training_pays", lambda: False)
    assert precision.choose_precision("cpu")[0] == "32-true"


@pytest.mark.parametrize(
    ("vendor", "avx512_bf16", "amx", "precision_"),
    [
        ("AuthenticAMD", True, False, "bf16-mixed"),  # Zen 4 / Zen 5: bf16 measured 1.86x fp32
        ("AuthenticAMD", False, False, "32-true"),  # Zen 1-3: bf16 emulated
        ("GenuineIntel", True, True, "bf16-mixed"),  # Xeon with AMX: 2.3x
        ("GenuineIntel", True, False, "32-true"),  # Xeon whose VM hides AMX: bf16 measured slower
        ("GenuineIntel", False, False, "32-true"),
        ("", True, False, "bf16-mixed"),  # no vendor line: AVX512-BF16 taken at its word
    ],
)
def test_cpu_precision_rule_by_measured_case(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vendor: str, avx512_bf16: bool, amx: bool, precision_: str
) -> None:
    from vit_app import precision

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu sse\n\n" if vendor else "processor : 0\n")
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision.torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(precision.torch.cpu, "_is_amx_tile_supported", lambda: amx)
    real_vendor = precision.cpu_vendor
    monkeypatch.setattr(precision, "cpu_vendor", lambda: real_vendor(info))
    assert precision.cpu_vendor() == vendor
    chosen, reason = precision.choose_precision("cpu")
    assert chosen == precision_ and reason
    assert real_vendor(tmp_path / "missing") == ""


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "native"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
)
def test_cpu_probes_combine_avx512_bf16_and_amx(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, native: bool
) -> None:
    from vit_app import precision

    monkeypatch.setattr(precision.torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(precision.torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert precision.cpu_has_amx() is amx
    assert precision.cpu_supports_bf16() is native


def test_cpu_probes_missing_from_torch_mean_no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    from vit_app import precision

    monkeypatch.delattr(precision.torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(precision.torch.cpu, "_is_amx_tile_supported")
    assert precision.cpu_has_amx() is False
    assert precision.cpu_supports_bf16() is False


def test_cpu_description_names_family_model_and_bf16(tmp_path: Path) -> None:
    from vit_app.precision import cpu_description

    block = "processor\t: {i}\ncpu family\t: {fam}\nmodel\t\t: {mod}\nmodel name\t: AMD EPYC\n"
    zen4 = tmp_path / "zen4"
    zen4.write_text("".join(block.format(i=i, fam=25, mod=17) + "flags\t\t: avx512f avx512_bf16\n\n" for i in range(2)))
    assert cpu_description(zen4) == "AMD EPYC (family 25 model 17; avx512_bf16)"
    zen3 = tmp_path / "zen3"
    zen3.write_text(block.format(i=0, fam=25, mod=1) + "flags\t\t: fpu avx2\n")
    assert cpu_description(zen3) == "AMD EPYC (family 25 model 1; no native bf16)"
    xeon = tmp_path / "xeon"
    xeon.write_text("cpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                    "flags\t\t: avx512_bf16 amx_bf16 amx_tile\n")  # fmt: skip
    assert cpu_description(xeon) == "Intel(R) Xeon(R) Platinum 8480+ (family 6 model 143; amx_bf16, avx512_bf16)"
    assert cpu_description(tmp_path / "missing")  # no /proc/cpuinfo: the machine type, never an error
