"""scripts/test_curve.py: the time to an accuracy, a saved curve drawn again without scoring, a run folder refused
without the data to score it on."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch
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


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_mistakes_are_one_line_each(tiny_ckpt: Path, tmp_path: Path) -> None:
    run = tiny_ckpt.parent.parent
    (tmp_path / "empty").mkdir()
    cases = {
        (str(tmp_path / "gone"),): "no such folder (give a run folder",
        (str(tmp_path / "empty"),): "no checkpoints/epoch*.ckpt or checkpoints/last.ckpt here",
        (str(tiny_ckpt),): "not a curve JSON this script wrote; give a run folder",
        (str(run), "--data", f"cifar10:{tmp_path / 'gone'}"): f"'{tmp_path / 'gone'}' does not exist)",
        (str(run), "--num-images", "0"): "--num-images must be at least 1, got 0",
    }
    for args, words in cases.items():
        res = _run(*args)
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)


def test_a_run_is_scored_on_its_own_data_as_validate_scores_it(tiny_ckpt: Path, tmp_path: Path) -> None:
    """The tiny run trained on the synthetic set: its card names it, so no data flag is needed, and the figure is the
    one `vit-app validate` gives on the same 32 images (the validation stream)."""
    from vit_app.cli import build_cli

    out = tmp_path / "curve.json"
    res = _run(str(tiny_ckpt.parent.parent), "--num-images", "32", "--json", str(out), "--png", str(tmp_path / "c.png"))
    assert res.returncode == 0, res.stderr[-2000:]
    saved = json.loads(out.read_text())
    assert saved["data"] == "synthetic" and [c["checkpoint"] for c in saved["curve"]] == ["last.ckpt"]
    assert "scoring 1 checkpoint on 32 images of synthetic" in res.stdout
    args = ["validate", "--ckpt_path", str(tiny_ckpt), "--data.synthetic_val_size", "32", "--trainer.precision"]
    args += ["32-true", "--trainer.enable_progress_bar", "false", "--eval_report.output_dir", str(tmp_path / "v")]
    cli = build_cli(args)
    reference = json.loads((tmp_path / "v" / "val_metrics.json").read_text())["val/acc1"]
    assert abs(saved["curve"][0]["test_acc1"] - reference) <= 1 / 32 + 1e-6  # at most one image apart (numerics)
    # ... because the images and labels are validate's, to the bit.
    from vit_app.inference import load_for_inference

    x, y = _module().test_set(load_for_inference(tiny_ckpt), "synthetic", 32)
    ref_x, ref_y = zip(*((b[0], b[1]) for b in cli.datamodule.val_dataloader()))
    assert torch.equal(y, torch.cat(ref_y)) and torch.allclose(x, torch.cat(ref_x), atol=1e-6)
    with Image.open(tmp_path / "c.png") as im:
        assert im.size == (770, 462)


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
