"""The map-quality metrics on cases with a known answer, and the explain-eval command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    args = ["explain-eval", "--ckpt", str(tiny_ckpt), str(tiny_ckpt), "--num-images", "24", "--steps", "4"]
    assert main([*args, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for name in ("mean-attention", "relevance", "attnlrp", "random", "pointing", "deletion AUC", "del / random"):
        assert name in table
    assert "24 images a model" in table and "2 model(s)" in table and "seed 0" in table
    record = json.loads((out / "explain_eval.json").read_text())
    res = record["results"]
    assert set(res) == {"mean-attention", "rollout", "attention", "relevance", "attnlrp", "cp-lrp", "random"}
    for r in res.values():
        for key in ("pointing", "mass_in_mask", "deletion_auc", "insertion_auc", "pair_pointing"):
            mean, lo, hi = r[key]
            assert 0 <= lo <= mean <= hi <= 1, (key, r[key])
    assert len(record["per_model"]) == 2 and record["per_model"][0] == record["per_model"][1]  # one model, twice
    assert (out / "explain_eval.png").stat().st_size > 10_000


def test_bootstrap_interval_and_pair_rule() -> None:
    from vit_app.explain.evaluate import bootstrap, pair_pointing

    values = np.array([1.0] * 90 + [0.0] * 10)
    mean, lo, hi = bootstrap(values, seed=0)
    assert mean == 0.9 and lo < 0.9 < hi and hi - lo < 0.15  # about 2 x 1.96 x sqrt(0.09 / 100) = 0.12
    assert bootstrap(values, seed=0) == bootstrap(values, seed=0)  # seeded: the same interval every time
    assert bootstrap(np.ones(5)) == (1.0, 1.0, 1.0)
    target = torch.zeros(2, 2, 2)
    other = torch.zeros(2, 2, 2)
    target[:, 0, 0], other[:, 0, 0] = 0.3, 0.1  # cell (0, 0): more of the asked-for object than of the other
    target[:, 1, 1], other[:, 1, 1] = 0.1, 0.4
    maps = torch.zeros(2, 2, 2)
    maps[0, 0, 0] = 1.0  # points at (0, 0): a hit
    maps[1, 1, 1] = 1.0  # points at (1, 1), where the other object dominates: a miss
    assert pair_pointing(maps, target, other).tolist() == [1.0, 0.0]


def test_two_object_split_has_disjoint_masks_of_two_classes() -> None:
    from vit_app.data.synthetic import render_pair

    for i in range(20):
        img, (a, b), masks = render_pair(3000, i, 32)
        assert img.shape == (32, 32, 3) and a != b and masks.shape == (2, 32, 32)
        assert masks[0].any() and masks[1].any() and not (masks[0] & masks[1]).any()
    np.testing.assert_array_equal(render_pair(3000, 7, 32)[0], render_pair(3000, 7, 32)[0])  # deterministic


def test_table_columns_line_up_whatever_the_method_names() -> None:
    from vit_app.explain.evaluate import format_table

    cell = [0.5, 0.4, 0.6]
    results = {n: {"deletion_auc": cell, "insertion_auc": cell} for n in ("rollout", "mean-attention", "random")}
    rows = format_table(results).splitlines()[2:5]
    assert [r.split()[0] for r in rows] == ["rollout", "mean-attention", "random"]
    assert len({r.index("0.500") for r in rows}) == 1 and len({len(r) for r in rows}) == 1
