"""scripts/timm_baseline.py: impossible arguments and a wrong data root are one line each; a short run writes its
curve and the figures it printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "timm_baseline.py"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_impossible_arguments_and_wrong_roots_are_one_line(cifar_root: Path, tmp_path: Path) -> None:
    cases = {
        ("--minutes", "-1"): "--minutes must be positive, got -1.0",  # it used to train for ever
        ("--minutes", "0"): "--minutes must be positive, got 0.0",  # it used to divide by zero
        ("--batch-size", "0"): "--batch-size must be positive and at most 50000",
        ("--lr", "0"): "--lr must be positive, got 0.0",
    }
    for args, words in cases.items():
        res = _run("--data-root", str(cifar_root), *args, cwd=tmp_path)
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    inner = cifar_root / "cifar-10-batches-py"
    for root, words in ((tmp_path / "gone", f"'{tmp_path / 'gone'}' does not exist)"),
                        (inner, f"give its parent, '{cifar_root.absolute()}'")):  # fmt: skip
        res = _run("--data-root", str(root), cwd=tmp_path)
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_a_short_run_writes_its_curve(cifar_root: Path, tmp_path: Path) -> None:
    res = _run("--data-root", str(cifar_root), "--minutes", "0.05", "--batch-size", "64", "--json", "b.json",
               "--precision", "fp32", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "b.json").read_text())
    assert out["precision"] == "fp32" and out["steps"] >= 1 and len(out["test_curve"]) == len(out["history"]) >= 1
    assert 0 <= out["test_acc1"] <= 1 and out["test_acc1"] == out["test_curve"][-1]["test_acc1"]
    assert f"timm baseline: test top-1 {out['test_acc1']:.4f} after {out['steps']} steps" in res.stdout
