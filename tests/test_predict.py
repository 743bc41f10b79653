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


def test_predict_scores_with_the_eval_tta_views_as_classify_does(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    import io

    from PIL import Image

    from vit_app.classify import classify
    from vit_app.inference import load_for_inference

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i, size in enumerate(((32, 32), (45, 30), (20, 64))):
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    files = sorted(str(p) for p in (tmp_path / "imgs").iterdir())
    model = load_for_inference(tiny_ckpt)

    def top(records: list[dict]) -> dict[str, list[float]]:
        return {Path(r["path"]).name: [c["prob"] for c in r["topk"]] for r in records}

    for tta, maps in (("none", "false"), ("none", "true"), ("flip_shift", "false"), ("flip_shift", "true")):
        text = io.StringIO()
        classify(model, files, text, "jsonl", tta=tta)
        ref = top([json.loads(line) for line in text.getvalue().splitlines()])
        args = ["--data.predict_path", str(tmp_path / "imgs"), "--model.eval_tta", tta, "--predict_writer.maps", maps]
        out = _predict(tiny_ckpt, tmp_path / tta / maps, args)
        got = top([json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()])
        said = "predicted with test-time augmentation flip_shift (18 views an image)" in capsys.readouterr().out
        assert said == (tta != "none") and got.keys() == ref.keys()
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], atol=1e-4, err_msg=f"{tta} maps={maps} {name}")
    plain = top([json.loads(ln) for ln in (tmp_path / "none" / "false" / "pred" / "predictions.jsonl").open()])
    assert any(not np.allclose(plain[n], got[n], atol=1e-4) for n in got)  # the views changed the probabilities
