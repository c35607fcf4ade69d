"""Advantage estimators against hand-worked numbers and independent scalar re-computations."""
import math
import statistics

import pytest
import torch
from hypothesis import given, settings, strategies as st

from numeric import assert_values
from megatron_rl.algorithms import (ADVANTAGE_ESTIMATORS, discounted_returns, gae, group_relative_advantages,
                                    process_supervision_advantages, reinforce_plus_plus_advantages,
                                    reinforce_plus_plus_baseline_advantages)

f64 = torch.float64


def test_gae_hand_worked():
    # one sequence, 3 tokens, reward 1 at the end, gamma=0.9, lam=0.8
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=f64)
    v = torch.tensor([[0.5, 0.6, 0.7]], dtype=f64)
    m = torch.ones(1, 3, dtype=f64)
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.8, whiten=False)
    d2 = 1.0 - 0.7                      # 0.3   (V after the last token is 0)
    d1 = 0.0 + 0.9 * 0.7 - 0.6          # 0.03
    d0 = 0.0 + 0.9 * 0.6 - 0.5          # 0.04
    a2 = d2
    a1 = d1 + 0.72 * a2                 # 0.246
    a0 = d0 + 0.72 * a1                 # 0.21712
    assert adv[0].tolist() == pytest.approx([a0, a1, a2], abs=1e-12)
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7], abs=1e-12)


def _gae_ref(rewards, values, gamma, lam):
    """Textbook GAE on a list of valid positions (no mask), plain floats."""
    n, adv, last = len(rewards), [0.0] * len(rewards), 0.0
    for t in reversed(range(n)):
        nv = values[t + 1] if t + 1 < n else 0.0
        last = rewards[t] + gamma * nv - values[t] + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_right_padding_and_interior_mask_match_reference():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, 7, generator=g, dtype=f64), torch.randn(4, 7, generator=g, dtype=f64)
    m = torch.ones(4, 7, dtype=f64)
    m[1, 5:] = 0                      # right padding
    m[2, 2:4] = 0                     # interior span skipped (e.g. tool output)
    m[3, 0] = 0
    adv, ret = gae(r, v, m, gamma=0.95, lam=0.9, whiten=False)
    for b in range(4):
        idx = [t for t in range(7) if m[b, t] == 1]
        ref = _gae_ref([r[b, t].item() for t in idx], [v[b, t].item() for t in idx], 0.95, 0.9)
        assert [adv[b, t].item() for t in idx] == pytest.approx(ref, abs=1e-12)
        assert [ret[b, t].item() for t in idx] == pytest.approx([a + v[b, t].item() for a, t in zip(ref, idx)], abs=1e-12)
    assert (adv[m == 0] == 0).all() and (ret[m == 0] == 0).all()


def test_gae_whitening_uses_masked_unbiased_stats():
    g = torch.Generator().manual_seed(1)
    r, v = torch.randn(3, 5, generator=g, dtype=f64), torch.randn(3, 5, generator=g, dtype=f64)
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=f64)
    raw, _ = gae(r, v, m, 1.0, 0.95, whiten=False)
    white, _ = gae(r, v, m, 1.0, 0.95, whiten=True)
    vals = raw[m == 1].tolist()
    mu, sd = statistics.mean(vals), statistics.stdev(vals)
    assert white[m == 1].tolist() == pytest.approx([(x - mu) / math.sqrt(sd ** 2 + 1e-8) for x in vals], abs=1e-9)


def test_gae_lambda_one_is_monte_carlo_minus_value():
    r = torch.tensor([[0.0, 0.5, 1.0]], dtype=f64)
    v = torch.tensor([[0.2, 0.1, 0.3]], dtype=f64)
    adv, ret = gae(r, v, torch.ones(1, 3, dtype=f64), gamma=1.0, lam=1.0, whiten=False)
    assert ret[0].tolist() == pytest.approx([1.5, 1.5, 1.0])
    assert adv[0].tolist() == pytest.approx([1.3, 1.4, 0.7])


def test_grpo_hand_worked():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5], dtype=f64)
    groups = torch.tensor([7, 7, 7, 7, 3, 3])
    adv = group_relative_advantages(scores, groups)
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    assert adv.tolist() == pytest.approx([0.5 / (s + 1e-6), -0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 0.5 / (s + 1e-6), 0, 0])


def test_drgrpo_and_rloo_hand_worked():
    scores = torch.tensor([3.0, 1.0, 2.0], dtype=f64)
    groups = ["p", "p", "p"]  # any hashable labels
    assert group_relative_advantages(scores, groups, std_normalize=False).tolist() == pytest.approx([1, -1, 0])
    # RLOO: r_i - mean(r_j, j != i)
    assert group_relative_advantages(scores, groups, leave_one_out=True).tolist() == pytest.approx([1.5, -1.5, 0.0])
    both = group_relative_advantages(scores, groups, leave_one_out=True, std_normalize=True)
    assert both.tolist() == pytest.approx([1.5 / (1 + 1e-6), -1.5 / (1 + 1e-6), 0.0])


def test_group_of_one_gets_zero():
    adv = group_relative_advantages(torch.tensor([5.0, 1.0, 2.0]), torch.tensor([0, 1, 1]))
    assert adv[0] == 0 and adv[1] < 0 < adv[2]
    assert group_relative_advantages(torch.tensor([5.0]), [0], leave_one_out=True).tolist() == [0.0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-10, 10), min_size=2, max_size=6), min_size=1, max_size=5),
       st.floats(-5, 5), st.floats(0.1, 10))
def test_grpo_matches_statistics_and_is_affine_invariant_per_group(groups, shift, scale):
    scores = torch.tensor([x for grp in groups for x in grp], dtype=f64)
    index = torch.tensor([i for i, grp in enumerate(groups) for _ in grp])
    adv = group_relative_advantages(scores, index)
    expect = []
    for grp in groups:
        mu, sd = statistics.mean(grp), statistics.stdev(grp)
        expect += [(x - mu) / (sd + 1e-6) for x in grp]
    # near-equal scores divide rounding error (~1e-14) by std + eps (~1e-6): compare at 1e-6
    assert adv.tolist() == pytest.approx(expect, abs=1e-6)
    # a group's advantages sum to 0; Dr.GRPO is invariant to a shift of the scores
    for i in range(len(groups)):
        assert adv[index == i].sum().item() == pytest.approx(0.0, abs=1e-6)
    dr = group_relative_advantages(scores, index, std_normalize=False)
    assert group_relative_advantages(scores * scale + shift, index, std_normalize=False).tolist() == \
        pytest.approx((dr * scale).tolist(), abs=1e-9)


def test_reinforce_pp_returns_hand_worked_and_whitened():
    r = torch.tensor([[0.0, -0.1, 1.0], [0.0, 2.0, 0.0]], dtype=f64)
    m = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=f64)
    ret = discounted_returns(r, m, gamma=0.5)
    assert_values(ret, [[0.5 * (-0.1 + 0.5), -0.1 + 0.5, 1.0], [1.0, 2.0, 0.0]])
    adv, ret2 = reinforce_plus_plus_advantages(r, m, gamma=0.5)
    vals = [0.2, 0.4, 1.0, 1.0, 2.0]
    mu, sd = statistics.mean(vals), statistics.stdev(vals)
    assert adv[m == 1].tolist() == pytest.approx([(x - mu) / math.sqrt(sd ** 2 + 1e-8) for x in vals], abs=1e-9)
    assert adv[1, 2] == 0 and torch.equal(ret, ret2)


def test_reinforce_pp_baseline():
    r = torch.zeros(4, 3, dtype=f64)
    r[:, -1] = torch.tensor([1.0, 0.0, 3.0, 1.0])
    m = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 0]], dtype=f64)
    r[3, 0], r[3, -1] = 1.0, 0.0  # the score sits on the last *valid* token
    adv, _ = reinforce_plus_plus_baseline_advantages(r, m, torch.tensor([0, 0, 1, 1]))
    centred = [0.5] * 3 + [-0.5] * 3 + [1.0] * 3 + [-1.0]  # scores minus group mean, per valid token
    mu, sd = statistics.mean(centred), statistics.stdev(centred)
    assert adv[m == 1].tolist() == pytest.approx([(x - mu) / math.sqrt(sd ** 2 + 1e-8) for x in centred], abs=1e-9)
    assert (adv[m == 0] == 0).all()


def test_process_supervision_hand_worked():
    # group of two responses; steps end at t=1 and t=3 in the first, t=2 in the second
    step_r = torch.tensor([[0, 1.0, 0, 0.0, 0], [0, 0, 0.5, 0, 0]], dtype=f64)
    ends = torch.tensor([[0, 1, 0, 1, 0], [0, 0, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    adv, _ = process_supervision_advantages(step_r, ends, mask, [0, 0])
    rewards = [1.0, 0.0, 0.5]
    mu, sd = statistics.mean(rewards), statistics.stdev(rewards)
    n = [(x - mu) / (sd + 1e-6) for x in rewards]
    assert adv[0].tolist() == pytest.approx([n[0] + n[1], n[0] + n[1], n[1], n[1], 0.0])
    assert adv[1].tolist() == pytest.approx([n[2], n[2], n[2], 0.0, 0.0])


def test_registry_grpo_broadcasts_outcome_over_valid_tokens():
    r = torch.zeros(2, 3, dtype=f64)
    r[0, 2], r[1, 1] = 1.0, 0.0
    m = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=f64)
    adv, _ = ADVANTAGE_ESTIMATORS["grpo"](token_rewards=r, response_mask=m, group_index=[0, 0])
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert_values(adv, [[a, a, a], [-a, -a, 0.0]])
    adv, _ = ADVANTAGE_ESTIMATORS["rloo"](token_rewards=r, response_mask=m, group_index=[0, 0])
    assert_values(adv, [[1, 1, 1], [-1, -1, 0]])
    with pytest.raises(ValueError, match="values"):
        ADVANTAGE_ESTIMATORS["gae"](token_rewards=r, response_mask=m)
