"""The one image loader: modes converted correctly, broken files refused with their name and reason."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

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
