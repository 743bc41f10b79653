"""scripts/profile_step.py: the per-part table of a step, config overrides passed through, bad flags refused."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import CONFIGS, REPO

SCRIPT = REPO / "scripts" / "profile_step.py"
SMALL = ["--data.synthetic_train_size", "256", "--data.synthetic_val_size", "32", "--data.batch_size", "16"]
PARTS = [
    "attention (all blocks)",
    "MLP (all blocks)",
    "rest of forward + backward",
    "optimiser step",
    "data (one batch)",
]


def test_profile_prints_every_part_with_shares_of_the_step(tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), str(CONFIGS / "quickstart.yaml"), "--rounds", "1", *SMALL]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    head = re.search(
        r"batch (\d+), (\d+) tokens, (fp32|bf16), \d+ threads: step ([\d.]+) ms \+ data ([\d.]+) ms", res.stdout
    )
    assert head, res.stdout
    assert head.group(1) == "16"  # the override reached the config
    assert head.group(2) == "21"  # 32 px / patch 8: 16 patches + 4 registers + the class token, none dropped
    rows = {m.group(1).strip(): (float(m.group(2)), float(m.group(3))) for m in
            re.finditer(r"^(.+?)\s+([\d.]+)\s+([\d.]+)%$", res.stdout, re.M)}  # fmt: skip
    assert list(rows) == PARTS
    whole = float(head.group(4)) + float(head.group(5))
    for ms, share in rows.values():
        assert ms >= 0
        # a share is that part over the whole step, up to the printed figures' rounding (0.05 ms, 0.05 %)
        assert abs(share - 100 * ms / whole) <= 0.06 + (5 + 0.1 * share) / whole
    assert "torch.compile" not in res.stdout  # only with --compile


def test_profile_refuses_a_flag_that_is_no_config_override(tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), str(CONFIGS / "quickstart.yaml"), "--compiled"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "unrecognized arguments: --compiled" in res.stderr
    assert "Traceback" not in res.stderr


def test_profile_names_a_bad_config_override_in_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, str(SCRIPT), str(CONFIGS / "quickstart.yaml"), "--model.no_such_key", "1"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "model.no_such_key" in res.stderr
    assert "Traceback" not in res.stderr


def test_profile_takes_the_trainer_precision_and_a_locality_model(tmp_path: Path) -> None:
    """--trainer.precision decides the autocast the step is timed under, whatever the CPU would pick by itself."""
    for precision, shown in (("32-true", "fp32"), ("bf16-mixed", "bf16")):
        cmd = [sys.executable, str(SCRIPT), str(CONFIGS / "quickstart.yaml"), "--rounds", "1", *SMALL]
        cmd += ["--trainer.precision", precision, "--model.attn_locality", "true"]
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert re.search(rf"batch 16, 21 tokens, {shown}, \d+ threads", res.stdout), res.stdout
