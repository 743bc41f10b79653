"""scripts/test_curve.py: the time to an accuracy, a saved curve drawn again without scoring, a run folder refused
without the data to score it on."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "test_curve.py"
CURVE = [{"checkpoint": f"epoch{i:03d}.ckpt", "minutes": 2.0 * (i + 1), "test_acc1": a}
         for i, a in enumerate([0.55, 0.72, 0.79, 0.81, 0.86])]  # fmt: skip


def _module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("test_curve_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_to_is_the_first_minute_at_or_over_the_target() -> None:
    time_to = _module().time_to
    assert time_to(CURVE, 0.8) == 8.0 and time_to(CURVE, 0.79) == 6.0 and time_to(CURVE, 0.7) == 4.0
    assert time_to(CURVE, 0.88) is None


def test_a_saved_curve_is_drawn_again_beside_a_baseline(tmp_path: Path) -> None:
    curve, base, png = tmp_path / "curve.json", tmp_path / "base.json", tmp_path / "curves.png"
    curve.write_text(json.dumps({"tta": "none", "curve": CURVE}))
    base.write_text(
        json.dumps({"test_curve": [{"minutes": 10.0, "test_acc1": 0.5}, {"minutes": 20.0, "test_acc1": 0.6}]})
    )
    cmd = [sys.executable, str(SCRIPT), str(curve), "--baseline", str(base), "--png", str(png)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"wrote {png}" in res.stdout
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (770, 462)  # 7 x 4.2 inches at 110 dpi


def test_a_run_folder_needs_the_data_root(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--data-root is needed to score a run folder" in res.stderr


def test_every_picks_every_nth_epoch_the_last_epoch_and_last_ckpt(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    for i in range(7):
        (tmp_path / "checkpoints" / f"epoch{i:03d}.ckpt").touch()
    names = [c.name for c in _module().checkpoints(tmp_path, every=3)]
    assert names == ["epoch002.ckpt", "epoch005.ckpt", "epoch006.ckpt", "last.ckpt"]
    assert len(_module().checkpoints(tmp_path)) == 8  # every=1: all seven epochs and last.ckpt
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--every", "0"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 2 and "--every must be at least 1, got 0" in res.stderr
