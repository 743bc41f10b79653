"""Shared fixtures. Real data comes from VIT_APP_TEST_DATA (CI sets it) or ../shared/data beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def _data_root() -> Path | None:
    env = os.environ.get("VIT_APP_TEST_DATA")
    if env:
        return Path(env)
    default = REPO.parent / "shared" / "data"
    return default if default.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder. When VIT_APP_TEST_DATA is set (as in CI) missing data is a failure, never a skip."""
    root = _data_root()
    if root is None:
        pytest.skip("no real data: set VIT_APP_TEST_DATA to the folder holding cifar10/ and imagenette-mini/")
    assert (root / "cifar10" / "cifar-10-batches-py").is_dir(), f"{root}/cifar10/cifar-10-batches-py is missing"
    assert (root / "imagenette-mini" / "train").is_dir(), f"{root}/imagenette-mini/train is missing"
    return root


@pytest.fixture(scope="session")
def cifar_root(shared_data: Path) -> Path:
    return shared_data / "cifar10"


@pytest.fixture(scope="session")
def imagenette_root(shared_data: Path) -> Path:
    return shared_data / "imagenette-mini"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for a few steps on the synthetic shapes: a real checkpoint written by `fit`."""
    from vit_app.cli import build_cli

    out = tmp_path_factory.mktemp("tiny_run")
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.max_steps", "4"]
    args += ["--data.synthetic_train_size", "64", "--data.synthetic_val_size", "32", "--data.batch_size", "16"]
    args += ["--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2"]
    args += ["--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out)]
    args += ["--trainer.enable_progress_bar", "false"]
    build_cli(args)
    return next(out.rglob("last.ckpt"))
