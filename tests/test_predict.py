"""`vit-app predict`: LightningCLI predict over a folder or a split, through the prediction-writer callback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.odd_images import BROKEN, make_odd_images
from vit_app.cli import build_cli


def _predict(tiny_ckpt: Path, tmp_path: Path, extra: list[str]) -> Path:
    """`vit-app predict` with no config and no architecture flags: the model comes from the checkpoint's card."""
    out = tmp_path / "pred"
    args = ["predict", "--ckpt_path", str(tiny_ckpt)]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    args += ["--predict_writer.output_dir", str(out), *extra]
    build_cli(args)
    return out


def test_predict_folder_with_maps_reports_bad_files(tiny_ckpt: Path, tmp_path: Path) -> None:
    make_odd_images(tmp_path / "imgs")
    out = _predict(
        tiny_ckpt, tmp_path, ["--data.predict_path", str(tmp_path / "imgs"), "--predict_writer.maps", "true"]
    )
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 13
    assert "maps: true" in (out / "predict_config.yaml").read_text()  # Lightning's copy of the config, with the output
    assert {Path(r["path"]).name for r in recs if "error" in r} == BROKEN
    good = [r for r in recs if "error" not in r]
    assert all(len(r["topk"]) == 5 for r in good)
    maps = sorted((out / "maps").glob("*.npy"))
    assert len(maps) == len(good) and np.load(maps[0]).shape == (4, 4)


def test_predict_over_the_test_split_as_csv(tiny_ckpt: Path, tmp_path: Path) -> None:
    extra = ["--data.synthetic_val_size", "40", "--predict_writer.format", "csv", "--predict_writer.topk", "2"]
    out = _predict(tiny_ckpt, tmp_path, extra)
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("path,label_1,index_1,prob_1,label_2") and len(lines) == 41
    assert lines[1].startswith("test/0,") and lines[40].startswith("test/39,")


def test_predict_counts_and_names_failures_and_exits_1_as_classify_does(tiny_ckpt: Path, tmp_path: Path, capsys):
    import io

    from vit_app.classify import classify
    from vit_app.cli import main
    from vit_app.inference import load_for_inference

    make_odd_images(tmp_path / "imgs")
    out = tmp_path / "pred"
    args = ["predict", "--ckpt_path", str(tiny_ckpt), "--data.predict_path", str(tmp_path / "imgs")]
    assert main([*args, "--predict_writer.output_dir", str(out), "--trainer.enable_progress_bar", "false"]) == 1
    said = capsys.readouterr()
    summary = next(ln for ln in (said.out + said.err).splitlines() if ln.startswith("vit-app predict: "))
    assert f"{13 - len(BROKEN)} predicted, {len(BROKEN)} failed" in summary and f"written to {out}" in summary
    recs = {Path(r["path"]).name: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    text = io.StringIO()  # classify over the same files: the same reasons, without the path repeated in them
    classify(load_for_inference(tiny_ckpt), sorted(str(p) for p in (tmp_path / "imgs").iterdir()), text, "jsonl")
    theirs = {Path(r["path"]).name: r for r in map(json.loads, text.getvalue().splitlines())}
    for name in BROKEN:
        assert recs[name]["error"] == theirs[name]["error"] and str(tmp_path) not in recs[name]["error"], name
    good = tmp_path / "good"
    good.mkdir()
    (good / "a.png").write_bytes(next(p for p in (tmp_path / "imgs").iterdir() if p.name not in BROKEN).read_bytes())
    assert main(["predict", "--ckpt_path", str(tiny_ckpt), "--data.predict_path", str(good),
                 "--predict_writer.output_dir", str(tmp_path / "pred2")]) == 0  # fmt: skip
    assert "1 predicted, 0 failed; written to" in capsys.readouterr().out
