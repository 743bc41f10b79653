"""The training-memory check: its counts, its thresholds, and a run that cannot fit refused before training."""

from __future__ import annotations

import pytest

from vit_app.errors import ConfigError
from vit_app.memcheck import StepShape, check_train_memory, free_memory_bytes, train_activation_bytes

GIB = 2**30


def test_counts_by_hand() -> None:
    # 6 blocks, batch 256, 64 tokens, 128 wide, mlp 2: (9 + 4) x 128 = 1,664 values a token, + 2 x 4 x 64 = 512 kept
    # attention values a token; 6 x 256 x 64 = 98,304 tokens in all.
    assert train_activation_bytes(StepShape(256, 64, 128, 6, 4, 2.0)) == 98_304 * (1_664 + 512) * 4
    assert (
        train_activation_bytes(StepShape(256, 64, 128, 6, 4, 2.0), bytes_per=2, attention_kept=False)
        == 98_304 * 1_664 * 2
    )
    # attention grows with the square of the tokens: 4x the tokens, 16x the attention part
    a1 = train_activation_bytes(StepShape(1, 64, 128, 1, 4, 2.0)) - train_activation_bytes(
        StepShape(1, 64, 128, 1, 4, 2.0), attention_kept=False
    )
    a4 = train_activation_bytes(StepShape(1, 256, 128, 1, 4, 2.0)) - train_activation_bytes(
        StepShape(1, 256, 128, 1, 4, 2.0), attention_kept=False
    )
    assert a4 == 16 * a1


def test_fits_warns_and_refuses() -> None:
    dims = StepShape(256, 64, 128, 6, 4, 2.0)
    high = train_activation_bytes(dims)  # 0.81 GiB
    low = train_activation_bytes(dims, bytes_per=2, attention_kept=False)
    assert check_train_memory(dims, free=None, shape="s") is None  # unknown free memory: no check
    assert check_train_memory(dims, free=high, shape="s") is None
    warning = check_train_memory(dims, free=high - 1, shape="patch 4 on 32x32 px: 64 tokens", half=True,
                                 attention_kept=False)  # fmt: skip
    assert warning is not None and "memory may run out" in warning and "data.batch_size 256" in warning
    assert "patch 4 on 32x32 px: 64 tokens" in warning and "0.8 GiB" in warning
    # the lower count decides refusal: half-width values and no attention matrices, unless the path keeps them
    assert check_train_memory(dims, free=low, shape="s", half=True, attention_kept=False) is not None
    with pytest.raises(ConfigError, match=r"out of memory ahead: .*data\.batch_size 256.*model\.patch_size"):
        check_train_memory(dims, free=low - 1, shape="s", half=True, attention_kept=False)
    with pytest.raises(ConfigError, match="keeps at least 0.8 GiB"):
        check_train_memory(dims, free=high - 1, shape="s")  # fp32 with the attention kept: low == high


def test_free_memory_on_this_cpu() -> None:
    import torch

    free = free_memory_bytes(torch.device("cpu"))
    assert free is not None and 0 < free < 2**50
    assert free_memory_bytes(torch.device("meta")) is None
