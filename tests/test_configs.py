"""Every shipped config parses and instantiates; bad configs fail with a short, clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONFIGS, REPO
from vit_app.cli import build_cli
from vit_app.data.datamodule import ViTDataModule
from vit_app.module import ViTClassifier

ALL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml"))


def _root_override(name: str, shared: Path) -> list[str]:
    kind = yaml.safe_load((CONFIGS / name).read_text())["data"]["dataset"]
    return {
        "cifar10": ["--data.root", str(shared / "cifar10")],
        "cifar100": ["--data.root", str(shared / "cifar10")],  # parse + build only; checked below
        "imagefolder": ["--data.root", str(shared / "imagenette-mini")],
    }.get(kind, [])


def test_configs_exist() -> None:
    assert {"quickstart.yaml", "cifar10.yaml", "cifar100.yaml", "cifar10_cpu.yaml", "imagenet_subset.yaml"} <= set(
        ALL_CONFIGS
    )


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_states_command_and_result(name: str) -> None:
    head = (CONFIGS / name).read_text().split("\n\n")[0]
    assert f"vit-app fit --config configs/{name}" in head
    assert "Result:" in head


@pytest.fixture(scope="module")
def local_timm_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Offline stand-ins for hub weights: timm models of the named architectures, saved as local files."""
    import timm
    import torch

    out = {}
    for name in {yaml.safe_load(p.read_text())["model"].get("pretrained") for p in CONFIGS.glob("*.yaml")} - {None}:
        arch = name.split(".")[0]
        path = tmp_path_factory.mktemp("weights") / f"{arch}.pth"
        torch.save(timm.create_model(arch, pretrained=False).state_dict(), path)
        out[name] = path
    return out


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_parses_and_instantiates(
    name: str, shared_data: Path, tmp_path: Path, local_timm_weights: dict[str, Path]
) -> None:
    cfg = yaml.safe_load((CONFIGS / name).read_text())
    kind = cfg["data"]["dataset"]
    args = ["--config", str(CONFIGS / name), *_root_override(name, shared_data)]
    if cfg["model"].get("pretrained"):  # no hub here: the same architecture's weights from a local file
        args += ["--model.pretrained", str(local_timm_weights[cfg["model"]["pretrained"]])]
    if kind == "cifar100":  # no CIFAR-100 copy here: the parser must still accept the file; the root check fires
        from vit_app.errors import ConfigError

        with pytest.raises(ConfigError, match="cifar-100-python"):
            build_cli(args, run=False)
        return
    cli = build_cli([*args, "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    assert isinstance(cli.model, ViTClassifier) and isinstance(cli.datamodule, ViTDataModule)
    dm, model = cli.datamodule, cli.model
    assert model.hparams.num_classes == dm.num_classes == len(dm.class_names)
    assert model.class_names == dm.class_names
    assert model.hparams.img_size == dm.img_size == model.model.patch_embed.img_size[0]
    assert tuple(model.hparams.mean) == tuple(dm.mean)


def test_no_config_refers_to_shared() -> None:
    for p in CONFIGS.glob("*.yaml"):
        assert "shared" not in p.read_text(), p


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vit_app", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("model:\n  bogus_key: 1\n", "model.bogus_key"),
        ("data:\n  batch_size: many\n", "data.batch_size"),
        ("data:\n  dataset: cifar10\n  root: /no/such/folder\n", "data.root: '/no/such/folder/cifar-10-batches-py'"),
        ("data:\n  dataset: imagefolder\n  root: /no/such/images\n", "data.root: folder '/no/such/images/train'"),
        ("model:\n  arch: vit_huge_patch99\n", "model.arch"),
    ],
    ids=["unknown-key", "wrong-type", "missing-cifar-root", "missing-imagefolder-root", "unknown-arch"],
)
def test_bad_config_gives_a_clear_message(body: str, expected: str, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(body)
    res = _run(["fit", "--config", str(cfg)], tmp_path)
    assert res.returncode == 2
    assert expected in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 6  # a short message, not a usage dump


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  dataset: cifar10\n  root: /no/such/folder\n")
    res = _run(["fit", "--config", str(cfg), "--debug"], tmp_path)
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_help_lists_commands_and_fit_help_works() -> None:
    res = _run(["--help"], REPO)
    assert res.returncode == 0 and "fit" in res.stdout and "quickstart" in res.stdout
    res = _run(["fit", "--help"], REPO)
    assert res.returncode == 0 and "--data.dataset" in res.stdout and "--model.arch" in res.stdout


def test_fp32_overlay_gives_the_recipe_it_was_measured_with(cifar_root: Path, tmp_path: Path) -> None:
    """configs/cpu/fp32.yaml, stacked after cifar10_cpu.yaml, keeps 16 tokens until 80 % of the budget and the
    regularisation and optimiser split it was measured with (weight decay 0.05, no drop-path, AdamW on the patch
    embedding) and the base's cosine lr, as measured; nothing else."""
    overlay = CONFIGS / "cpu" / "fp32.yaml"
    head = overlay.read_text().split("\n\n")[0]
    assert "vit-app fit --config configs/cifar10_cpu.yaml --config configs/cpu/fp32.yaml" in head
    assert "Result:" in head
    common = ["--data.root", str(cifar_root), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    base = build_cli(["--config", str(CONFIGS / "cifar10_cpu.yaml"), *common], run=False)
    fp32 = build_cli(["--config", str(CONFIGS / "cifar10_cpu.yaml"), "--config", str(overlay), *common], run=False)
    b, o = dict(base.model.hparams), dict(fp32.model.hparams)
    changed = {"patch_drop_rate", "patch_drop_end", "weight_decay", "drop_path_rate", "muon_embed"}
    assert {k for k in b if b[k] != o[k]} == changed
    assert (o["patch_drop_rate"], o["patch_drop_end"], o["weight_decay"], o["drop_path_rate"]) == (0.75, 0.8, 0.05, 0.0)
    assert (b["patch_drop_rate"], b["patch_drop_end"], b["weight_decay"], b["drop_path_rate"]) == (0.5, 0.6, 0.1, 0.1)
    assert (o["lr_schedule"], o["lr_hold"], b["lr_schedule"], b["lr_hold"]) == ("cosine", 0.0, "cosine", 0.0)
    assert (o["muon_embed"], b["muon_embed"]) == (False, True)

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    bc, oc = flat(base.config.as_dict()), flat(fp32.config.as_dict())
    assert {k for k in bc.keys() | oc.keys() if bc.get(k) != oc.get(k)} == {
        "config",
        "model.patch_drop_rate",
        "model.patch_drop_end",
        "model.weight_decay",
        "model.drop_path_rate",
        "model.muon_embed",
    }


def test_final_fit_overlay_trains_on_every_image_without_validation(tmp_path: Path, recwarn) -> None:  # noqa: ANN001
    """configs/cpu/final_fit.yaml, stacked after a recipe, holds nothing out and never validates: the run keeps
    every epoch's checkpoint the recipe asks for and last.ckpt, and writes no best.ckpt (no score to pick it by)."""
    overlay = CONFIGS / "cpu" / "final_fit.yaml"
    assert "vit-app fit --config configs/cifar10_cpu.yaml --config configs/cpu/final_fit.yaml" in overlay.read_text()
    assert yaml.safe_load(overlay.read_text()) == {"data": {"val_holdout": 0}, "trainer": {"limit_val_batches": 0}}
    out = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    tiny = ["--model.embed_dim", "32", "--model.depth", "1", "--model.num_heads", "2", "--data.val_holdout", "16"]
    args = ["--config", str(CONFIGS / "quickstart.yaml"), *tiny, "--config", str(overlay), *out]
    args += ["--data.synthetic_train_size", "64", "--data.batch_size", "16", "--trainer.max_epochs", "2"]
    cli = build_cli(["fit", *args, "--trainer.enable_progress_bar", "false"])
    assert cli.datamodule.val_holdout == 0  # the overlay comes after the flag that set 16, and wins
    assert cli.trainer.global_step == 8  # 64 images, batch 16, 2 epochs: every image trained on
    ckpts = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert "last.ckpt" in ckpts and "best.ckpt" not in ckpts, ckpts
    assert not [w for w in recwarn if "monitored key" in str(w.message)]
