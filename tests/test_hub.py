"""timm's folder format: `vit-app export --format timm` loads in timm and in vit-app with the same logits;
model.pretrained takes local-dir:DIR; the Hub push uploads only a folder that was checked first; TensorBoard logging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vit_app.cli import main
from vit_app.inference import load_for_inference


@pytest.fixture(scope="module")
def timm_dir(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "shapes-vit"
    assert main(["export", "--ckpt", str(tiny_ckpt), "--format", "timm", "--out", str(out)]) == 0
    return out


def test_timm_folder_loads_in_timm_and_in_vit_app_with_equal_logits(tiny_ckpt: Path, timm_dir: Path) -> None:
    import timm

    assert sorted(p.name for p in timm_dir.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    ref = load_for_inference(tiny_ckpt)
    cfg = json.loads((timm_dir / "config.json").read_text())
    assert cfg["label_names"] == ref.class_names and cfg["num_classes"] == len(ref.class_names)
    assert cfg["pretrained_cfg"]["mean"] == list(ref.card.input.mean)
    assert cfg["model_args"]["embed_dim"] == ref.card.model.embed_dim == 32
    x = torch.randn(3, 3, ref.card.input.img_size, ref.card.input.img_size, generator=torch.Generator().manual_seed(0))
    theirs = timm.create_model(f"local-dir:{timm_dir}", pretrained=True).eval()
    assert theirs.pretrained_cfg["label_names"] == ref.class_names
    ours = load_for_inference(timm_dir)
    with torch.no_grad():
        want = ref.model(x)
        assert float((theirs(x) - want).abs().max()) <= 1e-5
        assert float((ours.model(x) - want).abs().max()) <= 1e-5
    assert ours.card.class_names == ref.class_names and ours.card.input == ref.card.input
    readme = (timm_dir / "README.md").read_text()
    assert "library_name: timm" in readme and ref.class_names[0] in readme


def test_timm_folder_without_our_card_is_read_from_config_json(tiny_ckpt: Path, timm_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare"
    bare.mkdir()
    save_file(load_file(timm_dir / "model.safetensors"), bare / "model.safetensors")  # no metadata: timm's own
    (bare / "config.json").write_text((timm_dir / "config.json").read_text())
    m, ref = load_for_inference(bare), load_for_inference(tiny_ckpt)
    assert m.class_names == ref.class_names and m.card.model.architecture() == ref.card.model.architecture()
    x = torch.randn(2, 3, ref.card.input.img_size, ref.card.input.img_size)
    with torch.no_grad():
        torch.testing.assert_close(m.model(x), ref.model(x), rtol=0, atol=1e-6)


def test_pretrained_local_dir_loads_the_exported_weights(timm_dir: Path) -> None:
    from vit_app.model import VisionTransformer
    from vit_app.pretrained import load_pretrained

    ref = load_for_inference(timm_dir)
    fresh = VisionTransformer(ref.card.model)
    load_pretrained(fresh, f"local-dir:{timm_dir}")
    for k, v in ref.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    from vit_app.errors import ConfigError

    with pytest.raises(ConfigError, match="no such folder"):
        load_pretrained(fresh, f"local-dir:{timm_dir}-missing")
    again = VisionTransformer(ref.card.model)
    load_pretrained(again, str(timm_dir))  # a folder given plainly is read as local-dir: would read it
    for k, v in ref.model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    for path in (f"{timm_dir}/nothing.safetensors", "weights.pth", "./vit_small.bin", "~/nowhere/x.ckpt"):
        with pytest.raises(ConfigError, match=r"model.pretrained: file '.*' does not exist"):  # not sent to the hub
            load_pretrained(fresh, path)


def test_export_timm_refuses_a_file_name_and_push_needs_timm(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "--ckpt", str(tiny_ckpt), "--format", "timm", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "writes a folder" in capsys.readouterr().err
    args = ["export", "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "m.onnx"), "--push-to-hub", "me/repo"]
    assert main(args) == 2
    assert "--format timm" in capsys.readouterr().err
    bad = ["export", "--ckpt", str(tiny_ckpt), "--format", "timm", "--out", str(tmp_path / "d"), "--push-to-hub", "x"]
    assert main(bad) == 2
    assert "USER/REPO" in capsys.readouterr().err


def test_push_uploads_the_checked_folder(tiny_ckpt: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict]] = []

    class FakeApi:  # the Hub's client, recording instead of uploading (no network here)
        def __init__(self, token=None) -> None:
            calls.append(("init", {"token": token}))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", {"repo_id": repo_id, **kw}))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kw):
            folder = Path(kw["folder_path"])
            calls.append(("upload_folder", {**kw, "files": sorted(p.name for p in folder.iterdir()),
                                            "readme": (folder / "README.md").read_text()}))  # fmt: skip

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "pushed"
    args = ["export", "--ckpt", str(tiny_ckpt), "--format", "timm", "--out", str(out), "--push-to-hub", "me/shapes"]
    assert main([*args, "--private"]) == 0
    names = [c[0] for c in calls]
    assert names == ["init", "create_repo", "upload_folder"]
    assert calls[1][1]["repo_id"] == "me/shapes" and calls[1][1]["private"] is True
    up = calls[2][1]
    assert up["repo_id"] == "me/shapes" and Path(up["folder_path"]) == out
    assert up["files"] == ["README.md", "config.json", "model.safetensors"]
    assert 'create_model("hf-hub:me/shapes"' in up["readme"]
    assert "pushed to https://huggingface.co/me/shapes" in capsys.readouterr().err


def test_push_failure_is_one_line(tiny_ckpt: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import huggingface_hub

    class Offline:
        def __init__(self, token=None) -> None:
            pass

        def create_repo(self, repo_id, **kw):
            raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    args = [
        "export",
        "--ckpt",
        str(tiny_ckpt),
        "--format",
        "timm",
        "--out",
        str(tmp_path / "d"),
        "--push-to-hub",
        "a/b",
    ]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "push to the Hub as a/b failed: Failed to resolve 'huggingface.co'" in err and "Traceback" not in err
    assert (tmp_path / "d" / "model.safetensors").is_file()  # the checked folder stays, to push again later


def test_tensorboard_logger_config_writes_event_files(tmp_path: Path) -> None:
    import yaml

    from tests.conftest import CONFIGS
    from vit_app.cli import build_cli

    cfg = yaml.safe_load((CONFIGS / "logging" / "tensorboard.yaml").read_text())
    for logger in cfg["trainer"]["logger"]:  # the shipped config, written under tmp_path
        logger["init_args"]["save_dir"] = str(tmp_path / logger["init_args"]["save_dir"])
    (tmp_path / "tb.yaml").write_text(yaml.safe_dump(cfg))
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(tmp_path / "tb.yaml")]
    args += ["--trainer.max_steps", "2", "--data.synthetic_train_size", "32", "--data.synthetic_val_size", "16"]
    args += ["--data.batch_size", "16", "--model.embed_dim", "32", "--model.depth", "1", "--model.num_heads", "2"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    build_cli(args)
    events = list((tmp_path / "runs" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert list((tmp_path / "runs" / "run").rglob("metrics.csv"))  # CSV as well, and the checkpoints beside it
    assert list((tmp_path / "runs" / "run").rglob("last.ckpt"))


def test_a_locality_model_trains_loads_and_exports_but_not_to_timm(tmp_path: Path, capsys) -> None:
    """model.attn_locality through fit; the card rebuilds it with equal logits; .safetensors round-trips it;
    --format timm refuses it (timm has no locality bias), naming why, and leaves no folder behind."""
    from tests.conftest import CONFIGS
    from vit_app.cli import build_cli

    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.max_steps", "3"]
    args += ["--model.attn_locality", "true"]
    args += ["--data.synthetic_train_size", "32", "--data.synthetic_val_size", "16", "--data.batch_size", "16"]
    args += ["--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    build_cli(args + ["--trainer.enable_progress_bar", "false"])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    m = load_for_inference(ckpt)
    assert m.card.model.attn_locality and m.model.blocks[0].attn.locality is not None
    slopes = torch.stack([b.attn.locality for b in m.model.blocks])
    assert not torch.equal(slopes[0], torch.tensor([1.0, 0.0]))  # trained: moved from their initial values
    x = torch.randn(2, 3, m.card.input.img_size, m.card.input.img_size)
    st = tmp_path / "m.safetensors"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(st)]) == 0
    with torch.no_grad():
        torch.testing.assert_close(load_for_inference(st).model(x), m.model(x), rtol=0, atol=0)
    import onnxruntime as ort  # a dev dependency

    onnx = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(onnx)]) == 0
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    for n in (1, 3):  # the locality bias is built from the grid, not traced as a constant of the batch
        xn = torch.randn(n, 3, m.card.input.img_size, m.card.input.img_size)
        with torch.no_grad():
            want = m.model(xn).numpy()
        assert abs(sess.run(None, {"image": xn.numpy()})[0] - want).max() <= 1e-4
    capsys.readouterr()
    assert main(["export", "--ckpt", str(ckpt), "--format", "timm", "--out", str(tmp_path / "timm-dir")]) == 2
    err = capsys.readouterr().err
    assert "attn_locality" in err and "timm" in err and "Traceback" not in err
    assert not (tmp_path / "timm-dir").exists()
