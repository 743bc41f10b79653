"""scripts/benchmark.py runs end to end: one short pipeline pass over every shipped config, JSON written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONFIGS, REPO


@pytest.mark.slow
def test_benchmark_pipeline_rows_cover_every_shipped_config(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--only", "pipeline", "--quick", "--rounds", "2"]
    cmd += ["--pipeline-batches", "1", "--data-root", str(shared_data), "--json", str(out)]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    expected = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    if not (shared_data / "cifar100").exists():  # the shared data has no CIFAR-100: that row is skipped, and said
        expected.remove("cifar100.yaml")
        assert "(cifar100.yaml: no " in res.stdout
    assert sorted(r["config"] for r in rows) == expected
    for r in rows:
        assert r["data_img_s"] > 0 and r["model_img_s"] > 0, r
        assert r["data_over_model"] == pytest.approx(r["data_img_s"] / r["model_img_s"])
    assert "| cifar10_cpu.yaml | memory |" in res.stdout  # the table is printed
