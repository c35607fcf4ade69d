"""Aggregation modes (values and split invariance), overlong shaping, dynamic-sampling filter, mismatch IS."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from numeric import assert_values
from megatron_rl.algorithms import (LOSS_AGG_MODES, aggregate, global_normalizer, informative_group_mask,
                                    mismatch_importance_weights, overlong_penalty)

f64 = torch.float64


def test_aggregate_hand_worked():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=f64)
    m = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=f64)
    assert aggregate(x, m, "token-mean").item() == pytest.approx(18 / 5)
    assert aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx((3 + 15) / 2)
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx((1.5 + 5) / 2)
    assert aggregate(x, m, "seq-mean-token-sum-norm").item() == pytest.approx(18 / (3 * 2))  # / (padded length * B)
    assert aggregate(x, m, "seq-mean-token-sum-norm", normalizer=8).item() == pytest.approx(18 / 8)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(x, m, "mean")


def test_dr_grpo_keeps_the_mean_over_responses():
    """Dr.GRPO: 1/G sum_i 1/L sum_t x_it with a constant L. Hand-worked: G = 4 responses of 1, 2, 3 and
    0 valid tokens (the last one a filler row), L = 5: (1 + (2 + 3) + (4 + 5 + 6)) / 5 / 3 = 21 / 15.
    The same batch twice is the same loss, not twice it (a sum over responses would double it)."""
    x = torch.tensor([[1.0, 0, 0], [2, 3, 0], [4, 5, 6], [7, 8, 9]], dtype=f64)
    m = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=f64)
    norm = global_normalizer([m], "seq-mean-token-sum-norm", norm_len=5)
    assert norm.item() == 15.0
    assert aggregate(x, m, "seq-mean-token-sum-norm", norm).item() == pytest.approx(21 / 15)
    doubled = global_normalizer([m, m], "seq-mean-token-sum-norm", norm_len=5)
    assert aggregate(torch.cat([x, x]), torch.cat([m, m]), "seq-mean-token-sum-norm", doubled).item() == pytest.approx(21 / 15)


def test_aggregate_ignores_fully_masked_rows_and_empty_batches():
    x = torch.tensor([[1.0, 3.0], [100.0, 100.0]], dtype=f64)
    m = torch.tensor([[1, 1], [0, 0]], dtype=f64)
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx(2.0)
    assert aggregate(x, m, "seq-mean-token-sum").item() == pytest.approx(4.0)
    assert aggregate(x, torch.zeros_like(m), "token-mean").item() == 0.0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 8), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_aggregate_is_split_invariant(batch, length, pieces, seed):
    """Micro-batches (each padded to its own length) with the global normalizer sum to the whole."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, generator=g, dtype=f64)
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    m = (torch.arange(length)[None] < lengths[:, None]).to(f64)
    cuts = sorted(torch.randint(0, batch + 1, (pieces - 1,), generator=g).tolist())
    bounds = [0] + cuts + [batch]
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            keep = int(lengths[lo:hi].max()) + int(torch.randint(0, 3, (1,), generator=g))  # own padding
            xs, ms = x[lo:hi, :keep], m[lo:hi, :keep]
            if keep > length:
                xs, ms = F.pad(xs, (0, keep - length)), F.pad(ms, (0, keep - length))
            parts.append((xs, ms))
    for mode in LOSS_AGG_MODES:
        whole = aggregate(x, m, mode)
        norm = global_normalizer([p[1] for p in parts], mode, norm_len=length)
        total = sum(aggregate(xs, ms, mode, normalizer=norm) for xs, ms in parts)
        assert total.item() == pytest.approx(whole.item(), abs=1e-10), mode


def test_overlong_penalty_hand_worked():
    out = overlong_penalty(torch.tensor([10, 15, 16, 18, 20, 25]), max_len=20, buffer_len=5, penalty=0.5)
    assert out.tolist() == pytest.approx([0.0, 0.0, -0.1, -0.3, -0.5, -0.5])
    with pytest.raises(ValueError):
        overlong_penalty(torch.tensor([1]), max_len=4, buffer_len=5)


def test_informative_group_mask():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 2.5])
    keep = informative_group_mask(scores, ["a", "a", "b", "b", "c", "c", "c", "d"])
    assert keep.tolist() == [False, False, True, True, True, True, True, False]


def test_mismatch_truncate_and_mask_token_level():
    old = torch.tensor([[-1.0, -1.0, -1.0]], dtype=f64)
    rollout = torch.tensor([[-1.5, -0.2, -1.1]], dtype=f64)   # log w = 0.5, -0.8, 0.1
    m = torch.tensor([[1, 1, 0]], dtype=f64)
    w, keep, met = mismatch_importance_weights(old, rollout, m, level="token", mode="truncate", upper=1.5)
    assert_values(w, [[1.5, math.exp(-0.8), 0.0]])
    assert keep.tolist() == [[True, True, False]]
    assert met["mismatch_clipped_frac"].item() == pytest.approx(0.5)
    w, keep, met = mismatch_importance_weights(old, rollout, m, level="token", mode="mask", upper=1.5)
    assert keep.tolist() == [[False, False, False]]  # 1.65 > 1.5 and 0.45 < 1/1.5
    assert met["mismatch_masked_frac"].item() == pytest.approx(1.0)
    w, keep, _ = mismatch_importance_weights(old, rollout, m, level="token", mode="mask", upper=2.0, lower=0.4)
    assert_values(w, [[math.exp(0.5), math.exp(-0.8), 0.0]])


def test_mismatch_sequence_and_geometric_levels():
    old = torch.tensor([[-1.0, -1.0, -1.0]], dtype=f64)
    rollout = torch.tensor([[-1.5, -0.2, -9.0]], dtype=f64)
    m = torch.tensor([[1, 1, 0]], dtype=f64)
    w, _, _ = mismatch_importance_weights(old, rollout, m, level="sequence", upper=10)
    assert_values(w, [[math.exp(-0.3), math.exp(-0.3), 0.0]])
    w, _, met = mismatch_importance_weights(old, rollout, m, level="geometric", upper=10)
    assert_values(w, [[math.exp(-0.15), math.exp(-0.15), 0.0]])
    assert met["mismatch_abs_logprob_gap"].item() == pytest.approx(0.65)
