"""vit_app.tta: the views of test-time augmentation, checked pixel by pixel against what they should show."""

from __future__ import annotations

import pytest
import torch

from vit_app.tta import TTA_CHOICES, TTA_VIEWS, shifted, tta_logits, view_shift


def test_shifted_moves_the_image_and_fills_the_edge_by_reflection() -> None:
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    right = shifted(x, 1, 0)  # one pixel to the right: column c shows column c - 1, column 0 reflects column 1
    torch.testing.assert_close(right[..., 1:], x[..., :-1])
    torch.testing.assert_close(right[..., 0], x[..., 1])
    up_left = shifted(x, -2, -1)  # two left, one up
    torch.testing.assert_close(up_left[..., :-1, :-2], x[..., 1:, 2:])
    torch.testing.assert_close(up_left[..., -1, :-2], x[..., -2, 2:])  # the bottom row reflects the one above the last
    torch.testing.assert_close(up_left[..., :-1, -1], x[..., 1:, -3])  # the last column reflects two in from the edge
    assert shifted(x, 0, 0) is x


def test_flip_shift_averages_the_18_moved_and_mirrored_views() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    weights = torch.randn(3 * 8 * 8, 5)

    def model(v: torch.Tensor) -> torch.Tensor:  # a linear "model" that sees every pixel
        return v.flatten(1) @ weights

    for s in (1, 2):
        want = torch.zeros(4, 5)
        for dy in (-s, 0, s):
            for dx in (-s, 0, s):
                v = torch.empty_like(x)  # the view written out pixel by pixel: reflect the index at the edges
                for r in range(8):
                    for c in range(8):
                        rr, cc = abs(r - dy), abs(c - dx)
                        rr, cc = (14 - rr if rr > 7 else rr), (14 - cc if cc > 7 else cc)
                        v[..., r, c] = x[..., rr, cc]
                want += model(v) + model(v.flip(-1))
        torch.testing.assert_close(tta_logits(model, x, "flip_shift", shift=s), want / 18, rtol=1e-5, atol=1e-5)
    assert TTA_VIEWS == {"none": 1, "flip": 2, "flip_shift": 18} and tuple(TTA_VIEWS) == TTA_CHOICES


def test_view_shift_is_a_quarter_patch_and_bad_views_are_refused() -> None:
    assert [view_shift(p) for p in (1, 2, 4, 8, 14, 16, 32)] == [1, 1, 1, 2, 3, 4, 8]
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="tta: shift must be at least 1 pixel, got 0"):
        tta_logits(lambda v: v.mean((2, 3)), x, "flip_shift", shift=0)
    with pytest.raises(ValueError, match="augmentation 'rotate'; choose one of: none, flip, flip_shift"):
        tta_logits(lambda v: v.mean((2, 3)), x, "rotate")
