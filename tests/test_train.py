"""fast_dev_run on each dataset kind, and a checkpoint round trip: train, load for inference, same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import CONFIGS
from vit_app.checkpoint import safe_load
from vit_app.cli import build_cli
from vit_app.data.synthetic import SyntheticShapes
from vit_app.errors import ConfigError
from vit_app.inference import load_for_inference
from vit_app.optim import MuonAdamW

TINY = ["--model.embed_dim", "32", "--model.depth", "1", "--model.num_heads", "2"]


def _fit(args: list[str], tmp_path: Path):
    """`fit` with args (the --config first), then a tiny model and everything written under tmp_path."""
    out = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    return build_cli(["fit", *args, *TINY, *out, "--trainer.enable_progress_bar", "false"])


def _assert_trained(cli) -> None:
    assert cli.trainer.global_step > 0
    for p in cli.model.parameters():
        assert torch.isfinite(p).all()


def test_fast_dev_run_synthetic(tmp_path: Path) -> None:
    cli = _fit(["--config", str(CONFIGS / "quickstart.yaml"), "--trainer.fast_dev_run", "2"], tmp_path)
    _assert_trained(cli)
    assert cli.model.class_names == list(SyntheticShapes.classes)


@pytest.mark.slow
def test_fast_dev_run_cifar10_real_data(cifar_root: Path, tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "cifar10.yaml"), "--data.root", str(cifar_root), "--data.num_workers", "0"]
    cli = _fit([*args, "--trainer.fast_dev_run", "2", "--data.batch_size", "16"], tmp_path)
    _assert_trained(cli)
    assert cli.model.class_names[:3] == ["airplane", "automobile", "bird"]
    assert len(cli.datamodule.train_set) == 50_000 and len(cli.datamodule.val_set) == 10_000


@pytest.mark.slow
def test_fast_dev_run_cifar10_memory_loader(cifar_root: Path, tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "cifar10_cpu.yaml"), "--data.root", str(cifar_root)]
    cli = _fit([*args, "--trainer.fast_dev_run", "2", "--data.batch_size", "16"], tmp_path)
    _assert_trained(cli)


@pytest.mark.slow
def test_fast_dev_run_imagefolder_real_data(imagenette_root: Path, tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "imagenet_subset.yaml"), "--data.root", str(imagenette_root)]
    args += ["--data.num_workers", "0", "--data.batch_size", "4", "--model.patch_size", "32"]
    cli = _fit([*args, "--trainer.fast_dev_run", "2"], tmp_path)
    _assert_trained(cli)
    assert cli.datamodule.class_names[0] == "n01440764" and cli.datamodule.num_classes == 10
    assert len(cli.datamodule.train_set) == 1000 and len(cli.datamodule.val_set) == 500


def test_checkpoint_round_trip_gives_the_same_logits(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "quickstart.yaml"), "--trainer.max_steps", "4"]  # one epoch, validated
    args += ["--data.synthetic_train_size", "64", "--data.synthetic_val_size", "32", "--data.batch_size", "16"]
    args += ["--model.ema_decay", "0.5", "--data.loader", "torch"]  # inference must pick the EMA weights
    cli = _fit(args, tmp_path)
    ckpts = sorted(Path(tmp_path).rglob("*.ckpt"))
    assert {p.name for p in ckpts} == {"best.ckpt", "last.ckpt"}
    last = next(p for p in ckpts if p.name == "last.ckpt")

    loaded = load_for_inference(last)  # no config, no CLI
    assert not loaded.model.training
    assert loaded.class_names == cli.datamodule.class_names
    dm = cli.datamodule
    img = dm.val_set.base[0][0]  # a PIL image
    x_ref = dm.eval_transform(img)
    torch.testing.assert_close(loaded.transform(img), x_ref)
    x = torch.stack([dm.val_set[i][0] for i in range(8)])
    module = cli.model.eval()
    with torch.no_grad():
        expected = module.model_ema.module(x)
        got = loaded.model(x)
        differs_from_raw = (module.model(x) - expected).abs().max().item()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert differs_from_raw > 0  # so the check above really tells EMA weights from raw ones
    card = loaded.card
    assert card.input.img_size == 32 and card.input.mean == (0.5, 0.5, 0.5)
    assert card.weights == "model_ema.module." and card.provenance.dataset == "synthetic"
    prov = card.provenance
    assert prov.steps == 4 and prov.seed == 0 and prov.precision in ("32-true", "bf16-mixed")
    assert "val/acc1" in prov.metrics and prov.epochs == 1.0


class DropRateLog(Callback):
    """Records the model's PatchDropout rate at every training step."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.rates.append(pl_module.model.patch_drop_rate)


def test_patch_dropout_runs_until_patch_drop_end_then_stops(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "quickstart.yaml"), "--trainer.max_steps", "8"]
    args += ["--trainer.limit_val_batches", "0"]
    args += ["--data.synthetic_train_size", "128", "--data.synthetic_val_size", "16", "--data.batch_size", "16"]
    args += ["--model.patch_drop_rate", "0.5", "--model.patch_drop_end", "0.5"]
    args += ["--trainer.callbacks+=tests.test_train.DropRateLog"]
    cli = _fit(args, tmp_path)
    log = next(c for c in cli.trainer.callbacks if type(c).__name__ == "DropRateLog")  # imported by its path
    assert log.rates == [0.5] * 4 + [0.0] * 4  # steps 0-3 of 8 drop half the patches, the last half keeps all
    _assert_trained(cli)


class SizeLog(Callback):
    """Records the side of the images the model's patch embedding sees at every training step."""

    def __init__(self) -> None:
        self.sides: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        pl_module.model.patch_embed.register_forward_pre_hook(lambda _m, args: self.sides.append(args[0].shape[-1]))


def test_low_res_phase_trains_on_downsampled_batches_until_low_res_end(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "quickstart.yaml"), "--trainer.max_steps", "8"]
    args += ["--trainer.limit_val_batches", "0"]
    args += ["--data.synthetic_train_size", "128", "--data.synthetic_val_size", "16", "--data.batch_size", "16"]
    args += ["--model.low_res_size", "16", "--model.low_res_end", "0.5"]  # quickstart: 32 px, patch 8
    args += ["--trainer.callbacks+=tests.test_train.SizeLog"]
    cli = _fit(args, tmp_path)
    log = next(c for c in cli.trainer.callbacks if type(c).__name__ == "SizeLog")
    assert log.sides == [16] * 4 + [32] * 4  # steps 0-3 of 8 see 16 px (a 2x2 grid), the last half 32 px
    _assert_trained(cli)


class MixLog(Callback):
    """Wraps the module's timm Mixup to record, step by step, whether a batch went through it."""

    def __init__(self) -> None:
        self.mixed: list[bool] = []
        self._called = False

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        inner = pl_module.mixup

        def counting(x, y):  # noqa: ANN001, ANN202
            self._called = True
            return inner(x, y)

        pl_module.mixup = counting

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.mixed.append(self._called)
        self._called = False


def test_mixup_applies_only_inside_its_window_of_training(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "quickstart.yaml"), "--trainer.max_steps", "8"]
    args += ["--trainer.limit_val_batches", "0"]
    args += ["--data.synthetic_train_size", "128", "--data.synthetic_val_size", "16", "--data.batch_size", "16"]
    args += ["--model.cutmix_alpha", "1.0", "--model.mixup_start", "0.25", "--model.mixup_end", "0.75"]
    args += ["--trainer.callbacks+=tests.test_train.MixLog"]
    cli = _fit(args, tmp_path)
    log = next(c for c in cli.trainer.callbacks if type(c).__name__ == "MixLog")
    assert log.mixed == [False] * 2 + [True] * 4 + [False] * 2  # steps 2-5 of 8 are inside [0.25, 0.75)
    _assert_trained(cli)


class LrLog(Callback):
    """The learning rate each training step runs at."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_linear_schedule_holds_the_peak_then_decays_to_min_lr(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "quickstart.yaml"), "--trainer.max_steps", "8"]
    args += ["--trainer.limit_val_batches", "0", "--model.optimizer", "adamw", "--model.lr", "0.01"]
    args += ["--data.synthetic_train_size", "128", "--data.synthetic_val_size", "16", "--data.batch_size", "16"]
    args += ["--model.warmup_epochs", "0", "--model.min_lr_ratio", "0.2"]
    args += ["--model.lr_schedule", "linear", "--model.lr_hold", "0.5", "--trainer.callbacks+=tests.test_train.LrLog"]
    cli = _fit(args, tmp_path)
    log = next(c for c in cli.trainer.callbacks if type(c).__name__ == "LrLog")
    want = [0.01] * 5 + [0.01 * (0.2 + 0.8 * f) for f in (0.75, 0.5, 0.25)]  # held to step 4 of 8, then a line
    assert log.lrs == pytest.approx(want)
    _assert_trained(cli)


def test_muon_fit_saves_and_resumes_both_optimiser_halves(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "quickstart.yaml"), "--trainer.limit_val_batches", "0"]
    args += ["--data.synthetic_train_size", "64", "--data.synthetic_val_size", "16", "--data.batch_size", "16"]
    args += ["--model.optimizer", "muon", "--model.warmup_epochs", "0.5"]
    cli = _fit([*args, "--trainer.max_steps", "4"], tmp_path)
    opt = cli.trainer.optimizers[0]
    assert isinstance(opt, MuonAdamW) and cli.trainer.global_step == 4
    _assert_trained(cli)
    last = next(Path(tmp_path).rglob("last.ckpt"))
    saved = safe_load(last)["optimizer_states"][0]
    assert len(saved["muon"]["state"]) == 4 and saved["adamw"]["state"]  # 4 matrices in the 1-block model

    resumed = _fit([*args, "--trainer.max_steps", "6", "--ckpt_path", str(last)], tmp_path)
    opt2 = resumed.trainer.optimizers[0]
    assert resumed.trainer.global_step == 6
    sched_lr = resumed.trainer.lr_scheduler_configs[0].scheduler.get_last_lr()
    assert [g["lr"] for g in opt2._muon.param_groups + opt2._adamw.param_groups] == sched_lr


class EmbedAtStart(Callback):
    """Records the patch projection training starts from, and checks it on the images it was whitened from."""

    def __init__(self) -> None:
        self.weight: torch.Tensor | None = None
        self.centred = self.var_ratio = float("nan")

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        embed = pl_module.model.patch_embed
        self.weight = embed.proj.weight.detach().clone()
        if pl_module.hparams.patch_embed_init == "whiten" and trainer.global_step == 0:
            images = pl_module.whitening_images(trainer.datamodule)
            with torch.no_grad():
                y = embed(images)[0].reshape(-1, self.weight.shape[0]).double()  # (B * N, D)
            k = self.weight[0].numel()
            pixels = torch.nn.functional.unfold(images.double(), embed.patch_size, stride=embed.patch_size)
            total = torch.cov(pixels.transpose(1, 2).reshape(-1, k).T).trace()
            self.centred = (y.mean(0).abs().max() / y.std(0).mean()).item()
            self.var_ratio = (y.var(0).mean() / (0.02**2 * total)).item()


def test_whitened_patch_embed_is_set_at_fit_start_and_kept_on_resume(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "quickstart.yaml"), "--trainer.limit_val_batches", "0"]
    args += ["--data.synthetic_train_size", "64", "--data.synthetic_val_size", "16", "--data.batch_size", "16"]
    args += ["--trainer.callbacks+=tests.test_train.EmbedAtStart", "--trainer.max_steps", "2"]
    plain = _fit(args, tmp_path / "b")  # timm's init
    plain_start = next(c for c in plain.trainer.callbacks if type(c).__name__ == "EmbedAtStart").weight
    args += ["--model.patch_embed_init", "whiten"]
    cli = _fit(args, tmp_path / "a")
    log = next(c for c in cli.trainer.callbacks if type(c).__name__ == "EmbedAtStart")
    assert log.centred < 1e-4 and log.var_ratio == pytest.approx(1.0, rel=1e-3)  # centred, timm's output scale
    assert not torch.allclose(log.weight, plain_start, atol=1e-3)
    _assert_trained(cli)

    last = next(Path(tmp_path / "a").rglob("last.ckpt"))
    saved = safe_load(last)["state_dict"]["model.patch_embed.proj.weight"]
    resumed = _fit([*args, "--trainer.max_steps", "3", "--ckpt_path", str(last)], tmp_path / "a")
    assert resumed.trainer.global_step == 3
    log = next(c for c in resumed.trainer.callbacks if type(c).__name__ == "EmbedAtStart")
    assert torch.equal(log.weight, saved)  # the checkpoint's weights, not whitened again


def test_whitening_too_few_training_patches_is_a_config_error(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "quickstart.yaml"), "--trainer.limit_val_batches", "0"]
    args += ["--trainer.max_steps", "1", "--data.synthetic_train_size", "8", "--data.synthetic_val_size", "4"]
    args += ["--data.batch_size", "4"]
    args += ["--model.patch_embed_init", "whiten"]  # 8 images x 16 patches of 8 x 8 x 3 = 192 inputs
    with pytest.raises(ConfigError, match="model.patch_embed_init 'whiten': whitening a 192-input patch projection "
                       "needs more than 192 patches, got 128; use 'trunc_normal' with so few"):  # fmt: skip
        _fit(args, tmp_path)
