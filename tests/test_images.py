"""The one image loader: modes converted correctly, broken files refused with their name and reason."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CONFIGS, REPO
from tests.odd_images import BROKEN, make_odd_images
from vit_app.data.images import ImageLoadError, load_image


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_odd_images(tmp_path_factory.mktemp("odd"))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated.jpg", "cannot decode"),
        ("empty.png", "empty file"),
        ("text.png", "not an image"),
        ("bomb.png", "decompression bomb"),
    ],
)
def test_broken_files_are_refused_by_name(odd: dict[str, Path], name: str, reason: str) -> None:
    assert name in BROKEN
    with pytest.raises(ImageLoadError, match=reason) as e:
        load_image(odd[name])
    assert str(odd[name]) in str(e.value)


def test_bomb_is_refused_without_allocating(odd: dict[str, Path]) -> None:
    t = time.perf_counter()
    with pytest.raises(ImageLoadError):
        load_image(odd["bomb.png"])
    assert time.perf_counter() - t < 1.0  # 40000^2 pixels would take seconds and 1.6 GB to allocate


def test_sixteen_bit_is_scaled_not_saturated(odd: dict[str, Path]) -> None:
    a = np.asarray(load_image(odd["gray16.png"]))
    assert a.shape == (24, 24, 3)
    assert abs(int(a[0, 0, 0]) - 128) <= 1  # 32768 / 65535 * 255


def test_modes(odd: dict[str, Path]) -> None:
    cmyk = np.asarray(load_image(odd["cmyk.jpg"]))
    assert cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 60 and cmyk[0, 0, 2] < 60  # cyan 0, magenta+yellow full: red
    pal = np.asarray(load_image(odd["palette_transparent.png"]))
    assert tuple(pal[0, 20]) == (255, 255, 255)  # transparent index 0 composited onto white
    assert tuple(pal[0, 0]) == (0, 255, 0)  # opaque palette colour 1 kept
    la = np.asarray(load_image(odd["gray_alpha.png"]))
    assert tuple(la[0, 0]) == (255, 255, 255)  # fully transparent grey -> background
    assert tuple(np.asarray(load_image(odd["bilevel.png"]))[0, 0]) == (255, 255, 255)
    gif = np.asarray(load_image(odd["animated.gif"]))
    assert gif[0, 0, 0] > 200 and gif[0, 0, 2] < 50  # first frame (red), not the second (blue)


def test_exif_orientation_is_applied(odd: dict[str, Path]) -> None:
    assert load_image(odd["exif_rotated.jpg"]).size == (20, 40)


def test_extreme_aspect_loads(odd: dict[str, Path]) -> None:
    assert load_image(odd["wide_3000x1.png"]).size == (3000, 1)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="cannot read file"):
        load_image(tmp_path / "nope.jpg")


def _folder_with_bad_files(root: Path) -> set[str]:
    """train/ and val/ with 2 classes x 6 readable images and 2 unreadable files each; returns the bad file names."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
        good = (root / split / "a" / "0.png").read_bytes()
        (root / split / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
        (root / split / "b" / "text.png").write_text("not an image")
    return {"truncated.png", "text.png"}


def test_unreadable_folder_images_leave_the_batch_and_are_listed(tmp_path: Path) -> None:
    from vit_app.data.datamodule import ViTDataModule

    bad = _folder_with_bad_files(tmp_path)
    dm = ViTDataModule(dataset="imagefolder", root=str(tmp_path), img_size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    labels, reported = [], []
    for batch in dm.val_dataloader():
        labels += batch[1].tolist()
        reported += [Path(p).name for p, _ in (batch[2] if len(batch) == 3 else [])]
    assert sorted(labels) == [0] * 6 + [1] * 6  # every readable image once, with its own label; nothing stands in
    assert sorted(reported) == sorted(bad)


def _fit_folder(root: Path, out: Path, limit: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "vit_app", "fit", "--config", str(CONFIGS / "quickstart.yaml")]
    args += ["--data.dataset", "imagefolder", "--data.root", str(root), "--data.img_size", "32"]
    args += ["--data.loader", "torch", "--data.batch_size", "7", "--data.num_workers", "0"]
    args += ["--model.embed_dim", "32", "--model.depth", "1", "--model.num_heads", "2", "--trainer.max_epochs", "1"]
    args += ["--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.logger.init_args.save_dir", str(out), "--bad_images.limit", limit]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=out, env=env, capture_output=True, text=True, timeout=300)


def test_training_reports_unreadable_images_and_stops_past_the_limit(tmp_path: Path) -> None:
    _folder_with_bad_files(tmp_path / "data")
    (tmp_path / "ok").mkdir()
    ok = _fit_folder(tmp_path / "data", tmp_path / "ok", "0.2")  # 2 of 14 tolerated
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "epoch 0: 2 unreadable train images skipped (not replaced)" in ok.stderr
    assert "logging interval" not in ok.stderr  # 2 batches an epoch, under log_every_n_steps: no advice to change it
    assert "truncated.png" in ok.stderr and "text.png" in ok.stderr
    metrics = next((tmp_path / "ok").rglob("metrics.csv")).read_text()
    assert "train/bad_images" in metrics.splitlines()[0]

    (tmp_path / "strict").mkdir()
    stop = _fit_folder(tmp_path / "data", tmp_path / "strict", "0")
    assert stop.returncode == 2
    assert "could not be read, more than bad_images.limit allows" in stop.stderr
    assert "Traceback" not in stop.stderr
