"""The map-quality metrics on cases with a known answer, and the explain-eval command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vit_app.cli import main
from vit_app.explain.evaluate import auc, cell_coverage, perturbation_curves, pointing_and_mass


def test_cell_coverage_and_pointing_and_mass() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :4, :4] = True  # the object fills the top-left 2x2 cells of a 4x4 grid
    cov = cell_coverage(masks, (4, 4))
    assert cov[0, :2, :2].eq(1).all() and cov[0, 2:, :].eq(0).all()
    good = cov.clone()
    bad = 1 - cov
    hit, mass = pointing_and_mass(good, cov)
    assert hit.tolist() == [1.0, 1.0] and torch.allclose(mass, torch.ones(2))
    hit, mass = pointing_and_mass(bad, cov)
    assert hit.tolist() == [0.0, 0.0] and torch.allclose(mass, torch.zeros(2))
    uniform = torch.ones(2, 4, 4)
    assert torch.allclose(pointing_and_mass(uniform, cov)[1], torch.full((2,), 4 / 16))


class RegionModel(torch.nn.Module):
    """Class 1's logit is the mean of the top-left quarter: only those pixels matter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, :16, :16].mean(dim=(1, 2, 3)) * 10
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_deletion_and_insertion_rank_a_right_map_above_a_wrong_one() -> None:
    model = RegionModel()
    x = torch.ones(3, 3, 32, 32)  # a positive image: class 1 wins
    target = torch.ones(3, dtype=torch.long)
    right = torch.zeros(3, 4, 4)
    right[:, :2, :2] = 1.0  # points at the region that matters
    wrong = 1 - right
    d_right, i_right = perturbation_curves(model, x, right, target, steps=16)
    d_wrong, i_wrong = perturbation_curves(model, x, wrong, target, steps=16)
    assert d_right.shape == (3, 17)
    assert torch.allclose(d_right[:, 0], i_right[:, -1])  # nothing removed == everything revealed
    assert (auc(d_right) < auc(d_wrong) - 0.2).all()  # deleting the right patches first kills the score fast
    assert (auc(i_right) > auc(i_wrong) + 0.2).all()  # revealing them first restores it fast


def test_explain_eval_command(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ee"
    assert (
        main(["explain-eval", "--ckpt", str(tiny_ckpt), "--num-images", "24", "--steps", "4", "--out", str(out)]) == 0
    )
    table = capsys.readouterr().out
    for name in ("rollout", "grad-rollout", "attention", "random", "pointing", "deletion_auc"):
        assert name in table
    res = json.loads((out / "explain_eval.json").read_text())["results"]
    assert set(res) == {"rollout", "grad-rollout", "attention", "random"}
    for r in res.values():
        assert 0 <= r["pointing"] <= 1 and 0 <= r["mass_in_mask"] <= 1
        assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
    assert (out / "explain_eval.png").stat().st_size > 10_000
