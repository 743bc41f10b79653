"""Runs survive crashes: exact resume after SIGKILL, atomic checkpoint writes, SIGTERM saves, NaN stops, DDP
equals single-process, and unsafe checkpoint files are refused without running their code."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS, REPO
from vit_app.checkpoint import atomic_write, safe_load
from vit_app.errors import CheckpointError

TINY = ["--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2", "--model.drop_path_rate", "0.1"]
DATA = ["--data.synthetic_train_size", "256", "--data.synthetic_val_size", "32", "--data.batch_size", "16"]


def _fit(tmp: Path, extra: list[str], name: str = "run", timeout: int = 300) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "vit_app", "fit", "--config", str(CONFIGS / "quickstart.yaml"), *TINY, *DATA]
    args += ["--trainer.max_epochs", "3", "--trainer.deterministic", "true", "--trainer.precision", "32-true"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp), "--trainer.logger.init_args.name", name]
    args += ["--trainer.enable_progress_bar", "false", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


def _callback(cls: str, **kw) -> list[str]:
    out = ["--trainer.callbacks+", f"tests.helpers.{cls}"]
    for k, v in kw.items():
        out += [f"--trainer.callbacks.{k}", str(v)]
    return out


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_run_bitwise(tmp_path: Path) -> None:
    # 16 steps an epoch, 48 in all; last.ckpt every 5 steps; killed at step 23 (mid epoch 2), resumed from step 20.
    every = ["--checkpoint.last_every_n_steps", "5"]
    ref = _fit(tmp_path, [*every, *_callback("SaveWeights", path=tmp_path / "ref.pt")], name="ref")
    assert ref.returncode == 0, ref.stderr[-3000:]

    killed = _fit(tmp_path, [*every, *_callback("SignalAtStep", step=23, sig=9)], name="crash")
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "crash" / "version_0" / "checkpoints" / "last.ckpt"
    assert safe_load(last)["global_step"] == 20
    resumed = _fit(
        tmp_path, [*every, "--ckpt_path", "last", *_callback("SaveWeights", path=tmp_path / "resumed.pt")], "crash"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout
    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "resumed.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path: Path) -> None:
    res = _fit(tmp_path, _callback("SignalAtStep", step=7, sig=15))
    assert res.returncode == 143, res.stderr[-2000:]
    assert "SIGTERM" in res.stderr
    ckpt = safe_load(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 7


@pytest.mark.parametrize("command", ["validate", "test"])
def test_sigterm_during_evaluation_leaves_the_runs_last_ckpt_as_it_was(command: str, tiny_ckpt: Path, tmp_path: Path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"  # evaluating a run's own last.ckpt, where fit would save one
    ckpt.parent.mkdir()
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    before = ckpt.read_bytes()
    args = [sys.executable, "-m", "vit_app", command, "--ckpt_path", str(ckpt), "--data.synthetic_val_size", "64",
            "--data.batch_size", "16", *_callback("SignalAtEvalBatch")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 143, res.stderr[-2000:]
    assert "vit-app: stopped by SIGTERM" in res.stderr and "last.ckpt was saved" not in res.stderr
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_nan_loss_stops_with_a_message(tmp_path: Path) -> None:
    res = _fit(tmp_path, _callback("PoisonAtStep", step=3))
    assert res.returncode == 3
    assert "non-finite training loss" in res.stderr and "step 3" in res.stderr and "gradient_clip_val" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["memory", "torch"])
def test_ddp_two_processes_equal_one_process(tmp_path: Path, loader: str) -> None:
    common = ["--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--model.drop_path_rate", "0.0"]
    # AdamW: Muon's Newton-Schulz runs in bf16 on bf16 CPUs, where two processes' sums in another order differ by
    # more than the tolerance; this test is about DDP, not the optimiser
    common += ["--data.loader", loader, "--model.optimizer", "adamw"]
    one = _fit(tmp_path, [*common, *_callback("SaveWeights", path=tmp_path / "one.pt")], name="one")
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = [*common, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.batch_size", "8"]
    two = _fit(tmp_path, [*ddp, *_callback("SaveWeights", path=tmp_path / "two.pt")], name="two")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=f"{k} differs between DDP and one process")


def test_atomic_write_leaves_the_previous_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    atomic_write(target, lambda f: torch.save({"step": 1}, f))

    def crash(f) -> None:
        f.write(b"partial bytes of a new checkpoint")
        raise KeyboardInterrupt  # the process dies mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert safe_load(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


WRITER = """
import sys, torch
from vit_app.checkpoint import atomic_write
big = {"w": torch.randn(4_000_000)}
i = 0
while True:
    i += 1
    big["step"] = i
    atomic_write(sys.argv[1], lambda f: torch.save(big, f))
    print(i, flush=True)
"""


def test_sigkill_while_saving_keeps_a_valid_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.readline()  # one complete save exists
        time.sleep(delay)  # then kill it, most likely in the middle of the next 16 MB write
        proc.kill()
        proc.wait()
        ckpt = safe_load(target)
        assert ckpt["w"].shape == (4_000_000,) and ckpt["step"] >= 1


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['VIT_APP_PWNED']}",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VIT_APP_PWNED", str(marker))
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit()}, bad)
    with pytest.raises(CheckpointError, match="refused"):
        safe_load(bad)
    assert not marker.exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        safe_load(raw)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="only local"):
        safe_load("https://example.com/model.ckpt")
