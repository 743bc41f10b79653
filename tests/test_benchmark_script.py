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


def test_attention_section_rows_and_tables(tmp_path: Path) -> None:
    """--only attention: the 12 per-case rows and 6 whole-model rows, ratios of the medians, the rule's path named."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--only", "attention", "--quick", "--rounds", "1"]
    cmd += ["--iters", "1", "--batch-cifar", "2", "--batch-224", "1", "--json", str(out)]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    per_case = [r for r in rows if r["section"] == "attention"]
    models = [r for r in rows if r["section"] == "attention_model"]
    assert len(per_case) == 12 and len(models) == 6
    for r in per_case + models:
        assert r["sdpa_ms"] > 0 and r["explicit_ms"] > 0
        assert r["sdpa_over_explicit"] == pytest.approx(r["sdpa_ms"] / r["explicit_ms"])
    assert {(r["model"], r["tokens"]) for r in models} == {
        ("128x6 avg-pool (cifar10_cpu)", 64),
        ("ViT-Ti 32/4", 65),
        ("ViT-Ti 224/16", 197),
    }
    assert all(r["rule"] in ("SDPA", "explicit") for r in models)
    assert "## Attention path in whole models" in res.stdout
    assert "| ViT-Ti 224/16 | 197 | bf16 | 1 |" in res.stdout


def test_tables_leave_unmeasured_cells_blank(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    import benchmark

    rows = [
        {"section": "slowdown", "block": "first", "steps": 20, "step_ms": 12.345, "reference_ms": float("nan"),
         "step_over_reference": 1.0},
        {"section": "serve", "requests": 64, "batched_req_s": 210.4, "single_req_s": 90.2, "ratio": 2.333},
    ]  # fmt: skip
    benchmark.print_tables(rows)
    out = capsys.readouterr().out
    assert "| first | 20 | 12.3 |  | 1.00 |" in out
    assert "| 64 | 210 | 90 | 2.33 |" in out
    assert "## Slowdown over a run" in out and "| block | steps | step ms | reference ms | step / reference |" in out


def test_model_rows_take_only_the_precisions_asked_for(tmp_path: Path) -> None:
    """--precisions fp32: the 8 fp32 rows (2 sizes x 2 resolutions x train/infer) and no bf16 row."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--only", "model", "--precisions", "fp32"]
    cmd += ["--rounds", "1", "--iters", "1", "--batch-cifar", "2", "--batch-224", "1", "--json", str(out)]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [r for r in json.loads(out.read_text())["rows"] if r["section"] == "model"]
    assert {r["precision"] for r in rows} == {"fp32"}
    assert sorted((r["model"], r["res"], r["mode"]) for r in rows) == sorted(
        (m, res, mode) for m in ("ViT-Ti", "ViT-S") for res in ("32/4", "224/16") for mode in ("train", "infer")
    )
    for r in rows:
        assert r["speed_ratio"] == pytest.approx(r["ours_img_s"] / r["timm_img_s"])  # timm time / our time
