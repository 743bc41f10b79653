"""Every mistake gets one clear line: the exit status, one message naming the input and the reason, no traceback;
long commands report progress; nothing is overwritten or left behind."""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CONFIGS, REPO
from vit_app.cli import build_cli, main
from vit_app.inference import load_for_inference


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not vit-app checkpoints, each with the words its message must hold."""
    d = tmp_path_factory.mktemp("foreign")
    files: dict[str, tuple[Path, str]] = {}

    def add(name: str, data: bytes, words: str) -> None:
        (d / name).write_bytes(data)
        files[name] = (d / name, words)

    add("notes.ckpt", b"these are my notes\n", "looks like a text file")
    add("empty.ckpt", b"", "empty file")
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    add("photo.ckpt", png.getvalue(), "looks like a PNG image")
    add("config.ckpt", b'{"model": "vit"}', "looks like a JSON file")
    add("model.onnx", b"\x08\x07\x12\x07pytorch" + bytes(64), "looks like an ONNX model")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("readme.txt", "x")
    add("archive.ckpt", zipped.getvalue(), "a zip archive")
    real = tiny_ckpt.read_bytes()
    add("truncated.ckpt", real[: len(real) // 2], "truncated or damaged")
    add("pickle.ckpt", pickle.dumps({"a": 1}), "a pickle file without PyTorch's header")
    buf = io.BytesIO()
    torch.save({"state_dict": {}, "payload": _Exploit()}, buf)
    add("evil.ckpt", buf.getvalue(), "refused: it holds Python objects")
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(3)}, buf)
    add("state_dict.pth", buf.getvalue(), "has no 'vit_app' model card")
    buf = io.BytesIO()
    torch.save(torch.zeros(3), buf)
    add("tensor.ckpt", buf.getvalue(), "found Tensor")
    add("text.safetensors", b"not safetensors at all", "not a readable safetensors file")
    from safetensors.torch import save

    add("plain.safetensors", save({"w": torch.zeros(2)}), "without a vit-app model card")
    files["missing.ckpt"] = (d / "missing.ckpt", "checkpoint file not found")
    files["folder"] = (d, "is a folder")
    return files


def _img(folder: Path, name: str = "a.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
    return p


def _fails(args: list[str], capsys, *words: str, code: int = 2) -> str:
    """main(args) returns `code` and prints one error line holding every word (no traceback: none is raised)."""
    assert main(args) == code
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("vit-app: error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


TOOL_COMMANDS = {
    "classify": lambda ck, tmp: ["classify", str(_img(tmp / "in")), "--ckpt", str(ck)],
    "attention": lambda ck, tmp: ["attention", str(_img(tmp / "in")), "--ckpt", str(ck), "--out", str(tmp / "o")],
    "export": lambda ck, tmp: ["export", "--ckpt", str(ck), "--out", str(tmp / "m.onnx")],
    "calibrate": lambda ck, tmp: ["calibrate", "--ckpt", str(ck), "--num-images", "16"],
    "explain-eval": lambda ck, tmp: ["explain-eval", "--ckpt", str(ck), "--num-images", "4", "--out", str(tmp / "e")],
}


@pytest.mark.parametrize("command", sorted(TOOL_COMMANDS))
def test_foreign_files_as_checkpoints_get_one_clear_line(command: str, foreign, tmp_path: Path, capsys) -> None:
    for path, words in foreign.values():
        line = _fails(TOOL_COMMANDS[command](path, tmp_path), capsys, str(path), words)
        assert "weights_only" not in line and "False" not in line  # never an invitation to load unsafely
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()  # nothing written for a refused model


@pytest.mark.parametrize("command", ["test", "validate", "predict"])
def test_foreign_files_as_ckpt_path_get_one_clear_line(command: str, foreign, tmp_path: Path, capsys) -> None:
    for name in ("notes.ckpt", "empty.ckpt", "photo.ckpt", "model.onnx", "truncated.ckpt", "evil.ckpt",
                 "state_dict.pth", "missing.ckpt"):  # fmt: skip
        path, words = foreign[name]
        _fails([command, "--ckpt_path", str(path), "--trainer.logger", "false"], capsys, str(path), words)


def test_fit_resume_from_a_foreign_file_is_one_line(foreign, tmp_path: Path, capsys) -> None:
    path, words = foreign["notes.ckpt"]
    args = ["fit", "--ckpt_path", str(path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    _fails(args, capsys, str(path), words)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["classify", "IMG", "--batch-size", "0"], ["--batch-size", "must be 1 or more, got 0"]),
        (["classify", "IMG", "--batch-size", "-3"], ["--batch-size", "got -3"]),
        (["classify", "IMG", "--batch-size", "many"], ["--batch-size", "'many' is not a whole number"]),
        (["classify", "IMG", "--topk", "0"], ["--topk", "must be 1 or more"]),
        (["classify", "IMG", "--format", "xml"], ["--format", "invalid choice: 'xml'"]),
        (["classify", "IMG", "--device", "tpu"], ["--device", "tpu"]),
        (["classify", "IMG", "--tta", "crop"], ["--tta", "invalid choice: 'crop'", "'none', 'flip'"]),
        (["classify", "IMG", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["attention", "IMG", "--out", "OUT", "--discard-ratio", "1.0"], ["--discard-ratio", "must be in [0, 1)"]),
        (["attention", "IMG", "--out", "OUT", "--discard-ratio", "-0.1"], ["--discard-ratio"]),
        (["attention", "IMG", "--out", "OUT", "--layer", "7"], ["--layer 7", "the model has 2 blocks"]),
        (["attention", "IMG", "--out", "OUT", "--layer", "-3"], ["--layer -3"]),
        (["attention", "IMG", "--out", "OUT", "--class", "cat"], ["--class 'cat'", "circle, square, triangle"]),
        (["attention", "IMG", "--out", "OUT", "--class", "6"], ["--class '6'", "index 0-5"]),
        (["attention", "IMG", "--out", "OUT", "--method", "gradcam"], ["--method", "invalid choice"]),
        (["explain-eval", "--num-images", "0"], ["--num-images", "must be 1 or more"]),
        (["explain-eval", "--steps", "1"], ["--steps", "must be 2 or more"]),
        (["explain-eval", "--layer", "5"], ["--layer 5"]),
        (["explain-eval", "--methods", "lrp"], ["--methods", "invalid choice"]),
        (["explain-eval", "--data", "cifar10"], ["--data cifar10", "as cifar10:ROOT"]),
        (["explain-eval", "--data", "cifar10:/no/such/root"], ["/no/such/root/cifar-10-batches-py", "does not exist"]),
        (["explain-eval", "--data", "imagenet"], ["--data imagenet", "not a data set vit-app knows"]),
        (["explain-eval", "--data", "EMPTY"], ["no images found"]),
        (["calibrate", "--num-images", "0"], ["--num-images", "must be 10 or more"]),
        (["calibrate", "--batch-size", "0"], ["--batch-size"]),
        (["calibrate", "--data", "folder:/no/such/dir"], ["folder '/no/such/dir' does not exist"]),
        (["calibrate", "--data", "EMPTY"], ["labels come from one sub-folder a class", "missing: circle"]),
        (["calibrate", "--out", "X.ckpt", "--in-place"], ["--out or --in-place, not both"]),
        (["export", "--format", "onnx", "--out", "OUTx.pt"], ["x.pt", "an ONNX file should end .onnx"]),
        (["export", "--out", "OUTmodel.bin"], ["model.bin", "give --format"]),
        (["plot", "/no/such/run"], ["/no/such/run: no such folder"]),
        (["plot", "EMPTY"], ["no metrics.csv here"]),
    ],
)
def test_impossible_options_are_refused_by_name(
    args: list[str], words: list[str], tiny_ckpt: Path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "empty").mkdir()
    swap = {"IMG": str(_img(tmp_path / "in")), "OUT": str(tmp_path / "out"), "EMPTY": str(tmp_path / "empty")}
    argv = [swap.get(a, a.replace("OUT", str(tmp_path) + "/")) for a in args]
    if argv[0] != "plot":
        argv += ["--ckpt", str(tiny_ckpt)]
    _fails(argv, capsys, *words)
    assert not (tmp_path / "out").exists()  # a refused option leaves no output folder


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_evaluating_without_a_checkpoint_or_pretrained_weights_is_refused(command: str, tmp_path: Path, capsys):
    args = [command, "--config", str(CONFIGS / "quickstart.yaml"), "--data.predict_path", str(_img(tmp_path / "in"))]
    _fails(args, capsys, f"vit-app {command}: give --ckpt_path", "--model.pretrained", "the model is untrained")


def test_data_whose_class_count_differs_from_the_model_is_refused(tiny_ckpt: Path, cifar_root: Path, capsys) -> None:
    for command in (["calibrate", "--num-images", "16"], ["explain-eval", "--num-images", "4"]):
        _fails([*command, "--ckpt", str(tiny_ckpt), "--data", f"cifar10:{cifar_root}"], capsys,
               "has 10 classes", "the model has 6 (circle")  # fmt: skip


def test_missing_and_empty_inputs(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    empty, junk = tmp_path / "empty", tmp_path / "junk"
    empty.mkdir()
    junk.mkdir()
    (junk / "drawing.svg").write_text("<svg/>")
    (junk / "notes.txt").write_text("x")
    for command in (["classify"], ["attention", "--out", str(tmp_path / "o")]):
        _fails([*command, str(empty), "--ckpt", str(tiny_ckpt)], capsys, str(empty), "no images found")
        line = _fails([*command, str(junk), "--ckpt", str(tiny_ckpt)], capsys, "2 files skipped")
        assert "drawing.svg" in line and "notes.txt" in line
        _fails([*command, str(tmp_path / "nope.jpg"), "--ckpt", str(tiny_ckpt)], capsys, "nope.jpg: no such file")
        _fails([*command, str(tmp_path / "*.webp"), "--ckpt", str(tiny_ckpt)], capsys, "no files match")
    assert not (tmp_path / "o").exists()


def test_files_a_folder_scan_skips_are_named_and_counted(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mixed"
    _img(folder, "a.png")
    (folder / "vector.svg").write_text("<svg/>")
    assert main(["classify", str(folder), "--ckpt", str(tiny_ckpt), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    assert "1 files skipped" in captured.err and "vector.svg" in captured.err
    assert "1 classified, 0 failed, 1 skipped" in captured.err
    assert len(captured.out.strip().splitlines()) == 1


def test_heic_and_avif_are_read(tiny_ckpt: Path, tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")  # a dependency: installed with the package
    pillow_heif.register_heif_opener()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    img.save(tmp_path / "phone.heic")
    img.save(tmp_path / "web.avif")
    preds = load_for_inference(tiny_ckpt).predict([tmp_path / "phone.heic", tmp_path / "web.avif"])
    assert [len(p) for p in preds] == [5, 5]
    from vit_app.inputs import expand_inputs

    assert sorted(Path(p).name for p in expand_inputs([str(tmp_path)]).paths) == ["phone.heic", "web.avif"]


# --- nothing overwritten, nothing scattered -------------------------------------------------------------------


def test_calibrate_writes_beside_its_input_and_never_over_it(tiny_ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "run" / "best.ckpt"
    src.parent.mkdir()
    src.write_bytes(tiny_ckpt.read_bytes())
    before = src.read_bytes()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["calibrate", "--ckpt", str(src), "--num-images", "32"]) == 0
    assert src.read_bytes() == before  # the input is untouched
    assert load_for_inference(src.parent / "best.calibrated.ckpt").temperature != 1.0
    assert (src.parent / "best.calibrated.reliability.png").stat().st_size > 1000
    assert list(cwd.iterdir()) == []  # nothing in the current folder
    assert main(["calibrate", "--ckpt", str(src), "--num-images", "32", "--in-place"]) == 0
    assert load_for_inference(src).temperature != 1.0  # only when asked


def test_export_suffix_and_permissions(tiny_ckpt: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        for name in ("m.safetensors", "m.onnx", "m.pt"):  # the format from the suffix
            assert main(["export", "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "sub" / name)]) == 0
            mode = stat.S_IMODE((tmp_path / "sub" / name).stat().st_mode)
            assert mode == 0o644, (name, oct(mode))
    finally:
        os.umask(old)
    assert (
        load_for_inference(tmp_path / "sub" / "m.safetensors").class_names == load_for_inference(tiny_ckpt).class_names
    )


def test_one_spelling_each_and_the_other_accepted(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    img = str(_img(tmp_path / "in"))
    outs = []
    for fmt in ("jsonl", "json"):
        assert main(["classify", img, "--ckpt", str(tiny_ckpt), "--format", fmt]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and json.loads(outs[0])["topk"]
    for fmt in ("json", "jsonl"):
        out = tmp_path / f"pred_{fmt}"
        build_cli(["predict", "--ckpt_path", str(tiny_ckpt), "--data.predict_path", str(tmp_path / "in"),
                   "--predict_writer.format", fmt, "--predict_writer.output_dir", str(out),
                   "--trainer.precision", "32-true"])  # fmt: skip  # classify's numerics (else bf16 on bf16 CPUs)
        assert json.loads((out / "predictions.jsonl").read_text())["topk"] == json.loads(outs[0])["topk"]
    from vit_app.evaldata import parse_data

    assert parse_data(f"folder:{tmp_path / 'in'}") == parse_data(str(tmp_path / "in")).__class__(
        "folder", str(tmp_path / "in"), spec=f"folder:{tmp_path / 'in'}"
    )


def test_evaluation_goes_beside_its_checkpoint_and_takes_no_run_folder(tiny_ckpt: Path, tmp_path: Path, capsys):
    run = tmp_path / "runs" / "demo" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.write_bytes(tiny_ckpt.read_bytes())  # a checkpoint moved from where it was trained
    common = ["--ckpt_path", str(ckpt), "--data.synthetic_val_size", "24"]
    with _no_warning("dirpath has changed"):
        build_cli(["validate", *common])
        build_cli(["test", *common])
        build_cli(["predict", *common, "--data.predict_path", str(_img(tmp_path / "in"))])
    out = run / "eval" / "best"
    assert {p.name for p in out.iterdir()} == {"val_confusion.png", "val_per_class.csv", "val_metrics.json",
                                              "test_confusion.png", "test_per_class.csv", "test_metrics.json",
                                              "predictions.jsonl", "val_config.yaml", "test_config.yaml",
                                              "predict_config.yaml"}  # fmt: skip
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert set(metrics) == {"test/acc1", "test/acc5", "test/loss", "eval_tta"} and 0 <= metrics["test/acc1"] <= 1
    assert metrics["eval_tta"] == "none"
    assert sorted(p.name for p in (tmp_path / "runs" / "demo").iterdir()) == ["version_0"]  # no version_1
    assert not Path("eval_report").exists() and not Path("predictions").exists()


def test_evaluation_of_a_run_with_its_own_checkpoint_saver_warns_nothing(tmp_path: Path, capsys):
    """A config with its own ModelCheckpoint (as cifar10_cpu.yaml's every-epoch saver): evaluating a checkpoint of its
    run restores that callback's state, and Lightning's "dirpath has changed" note must not reach the user."""
    saver = tmp_path / "saver.yaml"
    saver.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                     "      init_args: {every_n_epochs: 1, save_top_k: -1}\n")  # fmt: skip
    common = ["--config", str(CONFIGS / "quickstart.yaml"), "--config", str(saver), "--data.synthetic_val_size", "16",
              "--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2"]  # fmt: skip
    build_cli(["fit", *common, "--trainer.max_steps", "2", "--data.synthetic_train_size", "32",
               "--data.batch_size", "16", "--trainer.logger.init_args.save_dir", str(tmp_path)])  # fmt: skip
    ckpt = next(tmp_path.rglob("last.ckpt"))
    with _no_warning("dirpath has changed"):
        build_cli(["test", *common, "--ckpt_path", str(ckpt)])
    assert "dirpath" not in capsys.readouterr().err
    assert (ckpt.parent.parent / "eval" / "last" / "test_metrics.json").is_file()
    assert not (ckpt.parent.parent / "eval" / "last" / "checkpoints").exists()  # nothing saved in evaluation


def test_evaluation_without_a_report_writes_nothing(tiny_ckpt: Path, tmp_path: Path, capsys):
    """--eval_report.enabled false: no report, and no copy of the config it would have been made with."""
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    for stage in ("validate", "test"):
        build_cli([stage, "--ckpt_path", str(ckpt), "--data.synthetic_val_size", "24",
                   "--eval_report.enabled", "false"])  # fmt: skip
    assert "val/acc1" in capsys.readouterr().out  # the figures are still printed
    assert not (tmp_path / "run" / "eval").exists() and not Path("config.yaml").exists()


class _no_warning:
    """A context in which no warning may contain `text`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self._seen = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        assert not [w for w in self._seen if self.text in str(w.message)]


def test_stages_build_only_the_splits_they_use() -> None:
    from vit_app.data.datamodule import ViTDataModule

    dm = ViTDataModule(loader="memory", synthetic_train_size=64, synthetic_val_size=16, batch_size=16, predict_path="x")
    dm.setup("predict")
    assert dm.train_set is None and dm.val_set is None and dm.test_set is None
    dm.setup("validate")
    assert dm.train_set is None and dm.val_set is not None and dm.test_set is None
    dm.setup("test")
    assert dm.train_set is None and dm.test_set is not None
    dm.setup("fit")
    assert dm.train_set is not None and len(dm.train_set[1]) == 64


# --- Lightning commands: configs, shapes, numbers -------------------------------------------------------------


def _cli(args: list[str], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "vit_app", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model.embed_dim", "30", "--model.num_heads", "4"], ["model.embed_dim 30 is not divisible by num_heads 4"]),
        (["--model.depth", "0"], ["model.depth must be a whole number >= 1"]),
        (["--model.patch_size", "5"], ["img_size 32 is not a positive multiple of patch_size 5"]),
        (["--model.drop_path_rate", "2"], ["model.drop_path_rate must be in [0, 1)"]),
        (["--model.lr", "0"], ["model.lr must be > 0"]),
        (["--model.lr=-1e-3"], ["model.lr must be > 0"]),
        (["--model.lr", "-1e-3"], ["--model.lr: expected one argument"]),  # argparse: a negative needs "="
        (["--model.weight_decay", "-1"], ["model.weight_decay"]),
        (["--model.label_smoothing", "1.5"], ["model.label_smoothing must be in [0, 1)"]),
        (["--model.ema_decay", "1.5"], ["model.ema_decay"]),
        (["--model.mixup_prob", "2"], ["model.mixup_prob"]),
        (["--model.mixup_start", "1.5"], ["model.mixup_start must be in [0, 1]"]),
        (
            ["--model.mixup_start", "0.5", "--model.mixup_end", "0.5"],
            ["model.mixup_end must be in (mixup_start=0.5, 1]"],
        ),
        (["--model.time_budget_min", "0"], ["model.time_budget_min must be > 0"]),
        (["--model.layer_decay", "0"], ["model.layer_decay"]),
        (["--model.betas", "[0.9, 1.5]"], ["model.betas"]),
        (["--model.arch", "vit_huge"], ["model.arch", "unknown preset"]),
        (["--data.batch_size", "0"], ["data.batch_size must be 1 or more"]),
        (["--data.batch_size", "-8"], ["data.batch_size"]),
        (["--data.batch_size", "65"], ["data.batch_size: 65 is more than the 64 training images", "lower"]),
        (["--data.num_workers", "-1"], ["data.num_workers"]),
        (["--data.img_size", "0"], ["data.img_size must be a whole number >= 1"]),
        (["--data.crop_pct", "1.5"], ["data.crop_pct must be in (0, 1]"]),
        (["--data.std", "[0, 1, 1]"], ["data.std values must be > 0"]),
        (["--data.val_holdout", "-1"], ["data.val_holdout"]),
        (["--data.val_holdout", "999999"], ["data.val_holdout: 999999 is not smaller than the 64 training images"]),
        (["--data.synthetic_train_size", "0"], ["data.synthetic_train_size"]),
        (  # 16,384 patches + a class token: terabytes at any precision, refused before training
            "--data.img_size 512 --model.patch_size 4 --data.batch_size 4096 --data.synthetic_train_size 4096".split(),
            ["out of memory ahead", "data.batch_size 4096", "patch 4 on 512x512 px: 16,385 tokens", "model.patch_size"],
        ),
        (["--data.dataset", "mnist"], ["data.dataset"]),
        (["--data.rrc_scale", "[0.5, 0.1]"], ["data.rrc_scale"]),
        (["--trainer.accelerator", "gpu"], ["trainer:"]),
        (["--trainer.devices", "0"], ["trainer:"]),
        (["--bad_images.limit", "-1"], ["bad_images.limit"]),
        (["--predict_writer.topk", "0"], ["predict_writer.topk"]),
    ],
)
def test_impossible_training_settings_are_one_line(args: list[str], words: list[str], tmp_path: Path, capsys) -> None:
    base = ["fit", "--data.synthetic_train_size", "64", "--data.synthetic_val_size", "16", "--trainer.max_steps", "1",
            "--trainer.logger.init_args.save_dir", str(tmp_path)]  # fmt: skip
    _fails([*base, *args], capsys, *words)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("model:\n  embed_dim: [unclosed\n", ["bad.yaml"]),
        ("- just\n- a list\n", ["bad.yaml"]),
        ("modle:\n  lr: 1.0e-3\n", ["modle"]),
        ("model:\n  lr: fast\n", ["model.lr"]),
        ("data: 5\n", ["data"]),
        ("model:\n\tlr: 1.0e-3\n", ["bad.yaml: not valid YAML at line 2", "a tab in the indentation"]),
        ("model:\n  lr: 1.0e-3\n  lr: 2.0e-3\n", ["bad.yaml: key 'lr' is set twice", "lines 2 and 3"]),
        ("model:\n  lr: 1.0e-3\ndata:\n  batch_size: 16\nmodel:\n  depth: 2\n", ["key 'model'", "lines 1 and 5"]),
        ("", ["bad.yaml: the file holds no settings"]),
        ("# nothing but a comment\n", ["bad.yaml: the file holds no settings"]),
    ],
    ids="broken-yaml a-list mistyped-section wrong-type section-not-a-mapping tab key-twice section-twice empty "
    "comments-only".split(),
)
def test_broken_and_mistyped_configs_are_one_line(body: str, words: list[str], tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(body)
    _fails(["fit", "--config", str(cfg)], capsys, *words)
    _fails(["fit", "--config", str(tmp_path / "missing.yaml")], capsys, "missing.yaml", "does not exist")


def test_real_cli_mistakes_print_no_traceback(tiny_ckpt: Path, foreign, tmp_path: Path) -> None:
    """The same through the installed entry point, in a fresh process: one line, no traceback, quickly."""
    cases = [
        (["test", "--ckpt_path", str(foreign["notes.ckpt"][0])], "looks like a text file"),
        (["classify", str(tmp_path), "--ckpt", str(foreign["empty.ckpt"][0])], "empty file"),
        (["fit", "--model.embed_dim", "30", "--model.num_heads", "4"], "not divisible by num_heads"),
        (["clasify", "x"], "did you mean 'classify'"),
    ]
    for args, words in cases:
        res = _cli(args, tmp_path, timeout=120)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and words in res.stderr
        assert len([ln for ln in res.stderr.splitlines() if "error" in ln]) == 1


@pytest.mark.slow
def test_fit_says_its_final_and_best_metrics_and_no_noise(tmp_path: Path) -> None:
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--data.synthetic_train_size", "256",
            "--data.synthetic_val_size", "64", "--trainer.max_epochs", "2", "--model.embed_dim", "32",
            "--model.num_heads", "2", "--trainer.logger.init_args.save_dir", str(tmp_path)]  # fmt: skip
    res = _cli(args, tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "vit-app: final: val/acc1 " in res.stdout and "vit-app: best: val/acc1 " in res.stdout
    assert "best checkpoint:" in res.stdout
    for noise in ("FLOPs", "not supported by the model summary", "deprecated", "GPU available", "Traceback",
                  "site-packages"):  # fmt: skip
        assert noise not in res.stderr + res.stdout, noise
    assert "vit-app: model: ViT 4 blocks x 32 wide" in res.stderr
    res = _cli([*args, "--trainer.max_epochs", "1"], tmp_path, timeout=300)
    assert sorted(p.name for p in (tmp_path / "quickstart").iterdir()) == ["version_0", "version_1"]


# --- progress -------------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_and_never_with_quiet_and_messages_on_their_own_line() -> None:
    from vit_app.progress import bar, say, set_quiet, shows_bars

    term, pipe = _Terminal(), io.StringIO()
    assert shows_bars(term) and not shows_bars(pipe)
    set_quiet(True)
    try:
        assert not shows_bars(term)
    finally:
        set_quiet(False)
    with bar(10, "work", file=term) as b:
        b.update(4)
        say("vit-app: a message", term)
        b.update(6)
    text = term.getvalue()
    assert "work" in text and " 4/10" in text  # the bar was drawn...
    before = text[: text.index("vit-app: a message")]
    assert before.endswith(("\r", "\n"))  # ...and the message starts a line of its own, not after the bar
    with bar(10, "work", file=pipe) as b:
        b.update(10)
    assert pipe.getvalue() == ""
