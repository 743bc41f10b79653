"""`vit-app classify` and `vit-app attention` on good, broken and odd images."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.odd_images import BROKEN, make_odd_images
from vit_app.classify import classify
from vit_app.cli import main
from vit_app.inference import load_for_inference


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    make_odd_images(folder / "odd")
    sub = folder / "odd" / "nested"
    sub.mkdir()
    Image.new("RGB", (50, 40), (200, 30, 30)).save(sub / "red.png")
    return folder


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_classify_folder_reports_each_bad_file_and_goes_on(tiny_ckpt: Path, odd_dir: Path) -> None:
    im = load_for_inference(tiny_ckpt)
    out, err = io.StringIO(), io.StringIO()
    done, failed, skipped = classify(im, [str(odd_dir)], out, "json", topk=3, batch_size=4, err=err)
    recs = _records(out.getvalue())
    names = {Path(r["path"]).name: r for r in recs}
    assert failed == len(BROKEN) and done == len(recs) - len(BROKEN) == 10 and skipped == 0
    for name in BROKEN:
        assert "error" in names[name] and names[name]["error"], name
        assert name in err.getvalue()
    for name, r in names.items():
        if name not in BROKEN:
            assert len(r["topk"]) == 3 and r["topk"][0]["label"] in im.class_names
            probs = [t["prob"] for t in r["topk"]]
            assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    paths = [r["path"] for r in recs]
    assert paths == sorted(paths)  # a folder is walked in sorted, deterministic order


def test_classify_matches_the_model_directly(tiny_ckpt: Path, tmp_path: Path) -> None:
    im = load_for_inference(tiny_ckpt)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    img.save(tmp_path / "a.png")
    out = io.StringIO()
    classify(im, [str(tmp_path / "a.png")], out, "json", topk=6)
    (rec,) = _records(out.getvalue())
    import torch

    with torch.no_grad():
        probs = torch.softmax(im.model(im.transform(img)[None]), -1)[0]
    assert rec["topk"][0]["index"] == int(probs.argmax())
    assert rec["topk"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_classify_tta_averages_the_logits_of_the_views(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    import torch

    from vit_app.tta import TTA_CHOICES, tta_logits, view_shift

    im = load_for_inference(tiny_ckpt)
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8))  # not symmetric
    img.save(tmp_path / "a.png")
    with torch.no_grad():
        x = im.transform(img)[None]
        plain = torch.softmax(im.model(x) / im.temperature, -1)[0]
        flip = torch.softmax(0.5 * (im.model(x) + im.model(x.flip(-1))) / im.temperature, -1)[0]
        shift = view_shift(im.model.patch_embed.patch_size[0])  # the views themselves are checked in test_tta
        moved = torch.softmax(tta_logits(im.model, x, "flip_shift", shift) / im.temperature, -1)[0]
    assert float((flip - plain).abs().max()) > 1e-4  # the settings give different answers on this image
    assert float((moved - flip).abs().max()) > 1e-4
    for tta, want in (("none", plain), ("flip", flip), ("flip_shift", moved)):
        assert main(["classify", str(tmp_path / "a.png"), "--ckpt", str(tiny_ckpt), "--format", "json",
                     "--topk", "6", "--tta", tta]) == 0  # fmt: skip
        (rec,) = _records(capsys.readouterr().out)
        got = {t["index"]: t["prob"] for t in rec["topk"]}
        assert got == pytest.approx({i: float(p) for i, p in enumerate(want)}, abs=1e-5), tta
    assert im.predict([img], topk=6, tta="flip_shift")[0] == rec["topk"]  # the Python API gives the same records
    assert TTA_CHOICES == ("none", "flip", "flip_shift")  # the CLI's --tta choices are written out there (no torch)


def test_cli_formats_exit_status_and_globs(tiny_ckpt: Path, odd_dir: Path, tmp_path: Path, capsys) -> None:
    good = str(odd_dir / "odd" / "good.jpg")
    assert main(["classify", good, "--ckpt", str(tiny_ckpt), "--format", "csv", "--topk", "2"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:4] == ["path", "label_1", "index_1", "prob_1"] and rows[1][0] == good and rows[1][-1] == ""
    pattern = str(odd_dir / "odd" / "*.png")
    out_file = tmp_path / "res.jsonl"
    rc = main(["classify", pattern, "--ckpt", str(tiny_ckpt), "--format", "json", "--output", str(out_file)])
    assert rc == 1  # empty.png, text.png and bomb.png match the glob and fail
    recs = _records(out_file.read_text())
    assert {Path(r["path"]).name for r in recs if "error" in r} == {"empty.png", "text.png", "bomb.png"}
    assert main(["classify", str(tmp_path / "missing.jpg"), "--ckpt", str(tiny_ckpt)]) == 2  # nothing to classify
    assert "missing.jpg: no such file" in capsys.readouterr().err
    assert main(["classify", good, "--ckpt", str(tmp_path / "nope.ckpt")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert main(["classify", good, "--ckpt", str(tiny_ckpt), "--format", "table"]) == 0
    assert "good.jpg" in capsys.readouterr().out


def test_attention_writes_overlays_maps_and_grids(tiny_ckpt: Path, odd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    args = ["attention", str(odd_dir), "--ckpt", str(tiny_ckpt), "--out", str(out), "--layers-grid", "--heads-grid"]
    assert main(args) == 1  # the broken files are reported
    index = _records((out / "index.jsonl").read_text())
    errors = {Path(r["path"]).name for r in index if "error" in r}
    assert errors == BROKEN
    ok = [r for r in index if "error" not in r]
    assert len(ok) == 10
    for r in ok:
        m = np.load(out / r["map"])
        assert m.shape == (4, 4) and np.isfinite(m).all()  # 32 px / patch 8
        png = Image.open(out / r["overlay"])
        assert png.width == 320 and png.height > 320  # the picture plus its caption banner
        assert Image.open(out / r["layers"]).width > 0 and Image.open(out / r["heads"]).width > 0
    assert len({r["overlay"] for r in ok}) == len(ok)  # unique file names


@pytest.mark.parametrize("method", ["grad-rollout", "attention"])
def test_attention_methods_and_class_choice(tiny_ckpt: Path, odd_dir: Path, tmp_path: Path, method: str) -> None:
    im = load_for_inference(tiny_ckpt)
    good = str(odd_dir / "odd" / "good.jpg")
    args = ["attention", good, "--ckpt", str(tiny_ckpt), "--out", str(tmp_path), "--method", method]
    assert main([*args, "--class", im.class_names[2]]) == 0
    (rec,) = _records((tmp_path / "index.jsonl").read_text())
    if method == "grad-rollout":
        assert rec["explained_class"] == im.class_names[2]
    assert main([*args, "--class", "no-such-class"]) == 2
