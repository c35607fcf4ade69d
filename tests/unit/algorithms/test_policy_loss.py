"""Clipped policy loss: hand-worked values, analytic gradients, dual-clip, GSPO, IS weights."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from numeric import assert_values
from megatron_rl.algorithms import policy_loss

f64 = torch.float64


def _inputs(log_ratios, advantages):
    old = torch.full((1, len(log_ratios)), -2.0, dtype=f64)
    logp = (old + torch.tensor([log_ratios], dtype=f64)).requires_grad_(True)
    return logp, old, torch.tensor([advantages], dtype=f64), torch.ones(1, len(log_ratios), dtype=f64)


def test_token_loss_each_branch_hand_worked():
    # (ratio, A): inside, clipped above (A>0), unclipped below (A>0), A<0 above, clipped below (A<0), dual
    ratios = [1.1, 1.5, 0.5, 1.5, 0.5, 5.0]
    adv = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    logp, old, a, m = _inputs([math.log(r) for r in ratios], adv)
    loss, met = policy_loss(logp, old, a, m, clip_low=0.2, clip_high=0.2, dual_clip=3.0, agg="seq-mean-token-sum")
    per_token = [-1.1, -1.2, -0.5, 1.5, 0.8, 3.0]
    assert loss.item() == pytest.approx(sum(per_token))
    loss.backward()
    # d(-A r)/d logp = -A r where the unclipped branch is active, 0 where a clip (or dual clip) wins
    assert_values(logp.grad, [[-1.1, 0.0, -0.5, 1.5, 0.0, 0.0]], atol=1e-12)
    assert met["pg_clipfrac"].item() == pytest.approx(2 / 6)
    assert met["pg_clipfrac_high"].item() == pytest.approx(1 / 6)
    assert met["pg_clipfrac_low"].item() == pytest.approx(1 / 6)
    assert met["pg_dual_clipfrac"].item() == pytest.approx(1 / 6)
    assert met["ratio_max"].item() == pytest.approx(5.0) and met["ratio_min"].item() == pytest.approx(0.5)


def test_without_dual_clip_negative_advantage_is_unbounded():
    logp, old, a, m = _inputs([math.log(5.0)], [-1.0])
    loss, _ = policy_loss(logp, old, a, m)
    assert loss.item() == pytest.approx(5.0)
    loss.backward()
    assert logp.grad.item() == pytest.approx(5.0)


def test_clip_higher_is_asymmetric():
    # DAPO: clip_low 0.2, clip_high 0.28; ratio 1.25 with A>0 is not clipped, 1.3 is; 0.75 with A<0 is
    logp, old, a, m = _inputs([math.log(1.25), math.log(1.3), math.log(0.75)], [1.0, 1.0, -1.0])
    loss, met = policy_loss(logp, old, a, m, clip_low=0.2, clip_high=0.28, agg="seq-mean-token-sum")
    assert loss.item() == pytest.approx(-1.25 - 1.28 + 0.8)
    loss.backward()
    assert_values(logp.grad, [[-1.25, 0.0, 0.0]])
    assert met["pg_clipfrac_high"].item() == pytest.approx(1 / 3)
    assert met["pg_clipfrac_low"].item() == pytest.approx(1 / 3)


def test_clip_boundary_counts_as_unclipped():
    # exactly at 1 + eps the two branches are equal: not clipped, gradient still flows
    logp, old, a, m = _inputs([math.log(1.2)], [2.0])
    loss, met = policy_loss(logp, old, a, m)
    loss.backward()
    assert met["pg_clipfrac"].item() == 0.0
    assert logp.grad.item() == pytest.approx(-2.4)


def _reference_token_loss(lr, adv, mask, cl, ch, dual):
    """Scalar re-computation: returns per-token loss and d loss / d logprob, in plain floats."""
    losses, grads = [], []
    for x, a in zip(lr, adv):
        r = math.exp(x)
        u, c = -a * r, -a * min(max(r, 1 - cl), 1 + ch)
        loss, grad = (u, -a * r) if u >= c else (c, 0.0)
        if dual is not None and a < 0 and -a * dual < loss:
            loss, grad = -a * dual, 0.0
        losses.append(loss)
        grads.append(grad)
    return losses, grads


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.floats(0.05, 0.4), st.floats(0.05, 0.5),
       st.one_of(st.none(), st.floats(1.5, 5)), st.integers(0, 2**31 - 1))
def test_token_loss_matches_scalar_reference(batch, length, cl, ch, dual, seed):
    g = torch.Generator().manual_seed(seed)
    lr = torch.randn(batch, length, generator=g, dtype=f64) * 0.6
    adv = torch.randn(batch, length, generator=g, dtype=f64)
    mask = (torch.rand(batch, length, generator=g) > 0.3).to(f64)
    old = torch.randn(batch, length, generator=g, dtype=f64) - 3
    logp = (old + lr).requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, mask, clip_low=cl, clip_high=ch, dual_clip=dual)
    loss.backward()
    n = max(mask.sum().item(), 1)
    ref_loss, ref_grad = 0.0, torch.zeros(batch, length, dtype=f64)
    for b in range(batch):
        losses, grads = _reference_token_loss(lr[b].tolist(), adv[b].tolist(), None, cl, ch, dual)
        for t in range(length):
            if mask[b, t]:
                ref_loss += losses[t] / n
                ref_grad[b, t] = grads[t] / n
    assert loss.item() == pytest.approx(ref_loss, abs=1e-10)
    torch.testing.assert_close(logp.grad, ref_grad, atol=1e-10, rtol=0)


def test_gspo_sequence_ratio_value_and_gradient():
    # two tokens with log-ratios 0.1 and -0.3: s = exp(-0.1); A = 1; GSPO clip (3e-4, 4e-4)
    logp, old, a, m = _inputs([0.1, -0.3], [1.0, 1.0])
    loss, met = policy_loss(logp, old, a, m, clip_low=3e-4, clip_high=4e-4, ratio="sequence", agg="seq-mean-token-mean")
    s = math.exp(-0.1)
    assert loss.item() == pytest.approx(-s)  # s < 1 - 3e-4 and A > 0: the unclipped branch is the max
    loss.backward()
    assert_values(logp.grad, [[-s / 2, -s / 2]])  # d s / d logp_t = s / |y|
    assert met["ratio_mean"].item() == pytest.approx(s)


def test_gspo_clips_whole_sequence():
    logp, old, a, m = _inputs([0.5, 0.3], [1.0, 1.0])  # s = exp(0.4) > 1 + 4e-4
    loss, met = policy_loss(logp, old, a, m, clip_low=3e-4, clip_high=4e-4, ratio="sequence", agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(-(1 + 4e-4))
    loss.backward()
    assert (logp.grad == 0).all() and met["pg_clipfrac"].item() == 1.0


def test_gspo_token_equals_gspo_for_constant_advantage_and_differs_otherwise():
    g = torch.Generator().manual_seed(3)
    old = torch.randn(3, 5, generator=g, dtype=f64)
    lr = torch.randn(3, 5, generator=g, dtype=f64) * 1e-3
    mask = torch.ones(3, 5, dtype=f64)
    mask[1, 3:] = 0
    const_adv = torch.randn(3, 1, generator=g, dtype=f64).expand(3, 5)
    grads = {}
    for level in ("sequence", "sequence-token"):
        logp = (old + lr).requires_grad_(True)
        loss, _ = policy_loss(logp, old, const_adv, mask, clip_low=3e-4, clip_high=4e-4, ratio=level, agg="seq-mean-token-mean")
        loss.backward()
        grads[level] = (loss.item(), logp.grad.clone())
    assert grads["sequence"][0] == pytest.approx(grads["sequence-token"][0])
    torch.testing.assert_close(grads["sequence"][1], grads["sequence-token"][1])
    # token-varying advantages: GSPO-token's per-token gradient is -A_t * s / |y| (here unclipped)
    adv = torch.tensor([[1.0, -2.0]], dtype=f64)
    logp, old1, _, m = _inputs([0.0, 0.0], [0, 0])
    loss, _ = policy_loss(logp, old1, adv, m, clip_low=0.2, clip_high=0.2, ratio="sequence-token", agg="seq-mean-token-mean")
    loss.backward()
    assert_values(logp.grad, [[-0.5, 1.0]])


def test_is_weights_scale_the_loss_and_are_not_differentiated():
    logp, old, a, m = _inputs([0.0, 0.0], [1.0, 1.0])
    w = torch.tensor([[0.5, 2.0]], dtype=f64, requires_grad=True)
    loss, _ = policy_loss(logp, old, a, m, is_weights=w, agg="seq-mean-token-sum")
    assert loss.item() == pytest.approx(-2.5)
    loss.backward()
    assert w.grad is None
    assert_values(logp.grad, [[-0.5, -2.0]])


def test_log_ratio_is_clamped_before_exp():
    logp, old, a, m = _inputs([200.0], [-1.0])
    loss, _ = policy_loss(logp, old, a, m, log_ratio_clamp=20.0)
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(math.exp(20.0))


def test_gspo_sequence_log_ratio_is_clamped_at_10():
    """GSPO: one sequence whose mean log-ratio is 30 with advantage -1. The sequence ratio is
    exp(10) (verl's bound), not exp(20) = 4.9e8 as with the token clamp; the bound is configurable."""
    logp, old, a, m = _inputs([30.0, 30.0], [-1.0, -1.0])
    loss, _ = policy_loss(logp, old, a, m, ratio="sequence", agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(math.exp(10.0))
    loss, _ = policy_loss(logp, old, a, m, ratio="sequence", agg="seq-mean-token-mean", seq_log_ratio_clamp=5.0)
    assert loss.item() == pytest.approx(math.exp(5.0))
    # the token level keeps its own bound
    loss, _ = policy_loss(logp, old, a, m, ratio="token", agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(math.exp(20.0))


def test_dual_clip_must_exceed_one():
    logp, old, a, m = _inputs([0.0], [1.0])
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(logp, old, a, m, dual_clip=0.9)
