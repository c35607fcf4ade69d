"""The 2025-26 policy objectives (algorithms/objectives): hand-worked values and gradients, a scalar
re-derivation of value and gradient per token (plain Python floats, no torch), the registry, and
the fused-kernel path giving the same numbers as the algorithm functions."""
import math
import random

import pytest
import torch

from numeric import assert_values
from megatron_rl.algorithms.objectives import (POLICY_OBJECTIVES, cispo_loss, dppo_loss, gmpo_loss,
                                               objective_from_config, sapo_loss)
from megatron_rl.config.schema import PolicyLossConfig

f64 = torch.float64
OLD = -2.0


def _inputs(ratios, advantages, old=OLD):
    old_t = torch.full((1, len(ratios)), old, dtype=f64)
    logp = (old_t + torch.tensor([[math.log(r) for r in ratios]], dtype=f64)).requires_grad_(True)
    return logp, old_t, torch.tensor([advantages], dtype=f64), torch.ones(1, len(ratios), dtype=f64)


# --- CISPO ---------------------------------------------------------------------------------------

def test_cispo_hand_worked():
    # ratios 0.5, 1.0, 1.5 with A = 1, -1, 2 and is_high 0.2: weights 0.5, 1.0, 1.2 (no floor)
    logp, old, a, m = _inputs([0.5, 1.0, 1.5], [1.0, -1.0, 2.0])
    loss, met = cispo_loss(logp, old, a, m, is_high=0.2, agg="seq-mean-token-sum")
    lp = [OLD + math.log(0.5), OLD, OLD + math.log(1.5)]
    assert loss.item() == pytest.approx(-0.5 * 1 * lp[0] + 1.0 * 1 * lp[1] - 1.2 * 2 * lp[2])  # 3.1734
    loss.backward()
    assert_values(logp.grad, [[-0.5, 1.0, -2.4]], atol=1e-12)  # -w A: every token keeps a gradient
    assert met["pg_clipfrac"].item() == pytest.approx(1 / 3)
    # with a floor of 1 - 0.3 the first weight becomes 0.7
    logp.grad = None
    loss, _ = cispo_loss(logp, old, a, m, is_high=0.2, is_low=0.3, agg="seq-mean-token-sum")
    loss.backward()
    assert logp.grad[0, 0].item() == pytest.approx(-0.7)


# --- SAPO ----------------------------------------------------------------------------------------

def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_sapo_hand_worked_and_the_gate_at_ratio_one():
    # r = 1, A = 1 (tau 1): gate sigmoid(0) * 4 = 2, loss -2, gradient -A exactly (the policy gradient)
    logp, old, a, m = _inputs([1.0], [1.0])
    loss, _ = sapo_loss(logp, old, a, m, agg="seq-mean-token-sum")
    loss.backward()
    assert loss.item() == pytest.approx(-2.0) and logp.grad.item() == pytest.approx(-1.0)
    # r = 1.5, A = -1 (tau 1.05): gate sigmoid(0.525) * 4 / 1.05 = 2.3936; d/dlogp = 4 s (1 - s) r
    logp, old, a, m = _inputs([1.5], [-1.0])
    loss, _ = sapo_loss(logp, old, a, m, agg="seq-mean-token-sum")
    loss.backward()
    s = _sigmoid(1.05 * 0.5)
    assert loss.item() == pytest.approx(s * 4 / 1.05) == pytest.approx(2.3936, abs=1e-4)
    assert logp.grad.item() == pytest.approx(4 * s * (1 - s) * 1.5)


# --- GMPO ----------------------------------------------------------------------------------------

def test_gmpo_hand_worked_clips_the_pessimistic_side_in_log_space():
    # log-ratios 0.1, 0.6, -0.6, clip 0.4. A = +1: 0.6 is capped at 0.4, -0.6 is not (its side is
    # pessimistic already): s = exp((0.1 + 0.4 - 0.6) / 3); each free token's gradient -A s / 3
    lr = [0.1, 0.6, -0.6]
    logp, old, a, m = _inputs([math.exp(x) for x in lr], [1.0, 1.0, 1.0])
    loss, met = gmpo_loss(logp, old, a, m, clip_low=0.4, clip_high=0.4)
    loss.backward()
    s = math.exp(-0.1 / 3)
    assert loss.item() == pytest.approx(-s)
    assert_values(logp.grad, [[-s / 3, 0.0, -s / 3]], atol=1e-12)
    assert met["pg_clipfrac"].item() == pytest.approx(1 / 3)
    # A = -1: -0.6 is floored at -0.4 and 0.6 stays: s = exp(0.1)
    logp, old, a, m = _inputs([math.exp(x) for x in lr], [-1.0, -1.0, -1.0])
    loss, _ = gmpo_loss(logp, old, a, m, clip_low=0.4, clip_high=0.4)
    loss.backward()
    assert loss.item() == pytest.approx(math.exp(0.1))
    assert_values(logp.grad, [[math.exp(0.1) / 3, math.exp(0.1) / 3, 0.0]], atol=1e-12)


def test_gmpo_is_the_mean_over_sequences():
    logp = torch.zeros(2, 3, dtype=f64, requires_grad=True)  # ratio 1 everywhere
    m = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=f64)
    a = torch.tensor([[2.0], [-1.0]], dtype=f64)
    loss, _ = gmpo_loss(logp, torch.zeros(2, 3, dtype=f64), a, m)
    assert loss.item() == pytest.approx((-2.0 + 1.0) / 2)


# --- DPPO ----------------------------------------------------------------------------------------

def test_dppo_tv_hand_worked_masks_by_probability_shift_not_ratio():
    """(p_rollout, p, A): (0.5, 0.8, +1) shifted up 0.3 > 0.2: masked; (0.5, 0.6, +1) kept, weight
    1.2; (0.9, 0.6, -1) shifted down 0.3: masked; (0.01, 0.05, +1) kept although its ratio is 5 (a
    PPO clip would cut it), weight 5."""
    p_roll, p, adv = [0.5, 0.5, 0.9, 0.01], [0.8, 0.6, 0.6, 0.05], [1.0, 1.0, -1.0, 1.0]
    logp = torch.tensor([[math.log(x) for x in p]], dtype=f64, requires_grad=True)
    anchor = torch.tensor([[math.log(x) for x in p_roll]], dtype=f64)
    old = anchor.clone()  # the trainer's pre-update logprobs; the region is centred on the rollout's
    m, a = torch.ones(1, 4, dtype=f64), torch.tensor([adv], dtype=f64)
    loss, met = dppo_loss(logp, old, a, m, anchor_logprob=anchor, divergence="tv", agg="seq-mean-token-sum")
    assert loss.item() == pytest.approx(-1.2 * math.log(0.6) - 5.0 * math.log(0.05))
    loss.backward()
    assert_values(logp.grad, [[0.0, -1.2, 0.0, -5.0]], atol=1e-12)
    assert met["pg_clipfrac"].item() == pytest.approx(0.5)


def test_dppo_binary_kl_hand_worked():
    # (p_rollout, p) = (0.5, 0.8), A = +1: KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2) = 0.2231 > 0.2: masked;
    # (0.5, 0.6): 0.5 ln(0.5/0.6) + 0.5 ln(0.5/0.4) = 0.0204: kept
    logp = torch.tensor([[math.log(0.8), math.log(0.6)]], dtype=f64, requires_grad=True)
    anchor = torch.full((1, 2), math.log(0.5), dtype=f64)
    loss, met = dppo_loss(logp, anchor, torch.ones(1, 2, dtype=f64), torch.ones(1, 2, dtype=f64),
                          anchor_logprob=anchor, divergence="kl", agg="seq-mean-token-sum")
    loss.backward()
    assert_values(logp.grad, [[0.0, -1.2]], atol=1e-9)
    assert met["pg_clipfrac"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="tv, kl"):
        dppo_loss(logp, anchor, torch.ones(1, 2, dtype=f64), torch.ones(1, 2, dtype=f64), divergence="js")


# --- scalar re-derivation: every objective, random tokens, value and gradient -----------------------

def _scalar(kind, lp, old, anc, adv):
    """Per-token (value, d value / d logp) with Python floats, straight from the formulas."""
    r = math.exp(lp - old)
    if kind == "cispo":
        w = min(r, 1.2)
        return -w * adv * lp, -w * adv
    if kind == "sapo":
        tau = 1.0 if adv > 0 else 1.05
        s = _sigmoid(tau * (r - 1))
        return -s * 4 / tau * adv, -adv * 4 * s * (1 - s) * r
    if kind == "dppo":
        p, pa = math.exp(lp), math.exp(anc)
        out = (adv > 0 and p - pa > 0.2) or (adv < 0 and pa - p > 0.2)
        w = 0.0 if out else min(p / pa, 10.0)
        return -adv * w * lp, -adv * w
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["cispo", "sapo", "dppo"])
def test_token_objectives_match_a_scalar_rederivation(kind):
    rng = random.Random(7)
    n = 64
    old = [rng.uniform(-3, -0.05) for _ in range(n)]
    lp = [o + rng.gauss(0, 0.4) for o in old]
    lp = [min(x, -1e-3) for x in lp]
    anc = [o + rng.gauss(0, 0.2) for o in old]
    adv = [rng.choice([-1.5, -0.5, 0.7, 2.0]) for _ in range(n)]
    logp = torch.tensor([lp], dtype=f64, requires_grad=True)
    kwargs = dict(anchor_logprob=torch.tensor([anc], dtype=f64)) if kind == "dppo" else {}
    loss, _ = POLICY_OBJECTIVES[kind](logp, torch.tensor([old], dtype=f64), torch.tensor([adv], dtype=f64),
                                      torch.ones(1, n, dtype=f64), agg="seq-mean-token-sum", **kwargs)
    loss.backward()
    expected = [_scalar(kind, *t) for t in zip(lp, old, anc, adv)]
    assert loss.item() == pytest.approx(sum(v for v, _ in expected), rel=1e-10)
    assert_values(logp.grad, [[g for _, g in expected]], atol=1e-10)


def test_gmpo_matches_a_scalar_rederivation():
    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(1, 9)
        lr = [rng.gauss(0, 0.5) for _ in range(n)]
        adv = rng.choice([-1.3, 0.8])
        capped = [min(x, 0.4) if adv > 0 else max(x, -0.4) for x in lr]
        s = math.exp(sum(capped) / n)
        logp = torch.tensor([[OLD + x for x in lr]], dtype=f64, requires_grad=True)
        loss, _ = gmpo_loss(logp, torch.full((1, n), OLD, dtype=f64), torch.full((1, 1), adv, dtype=f64),
                            torch.ones(1, n, dtype=f64))
        loss.backward()
        assert loss.item() == pytest.approx(-adv * s)
        free = [c == x for c, x in zip(capped, lr)]
        assert_values(logp.grad, [[-adv * s / n if f else 0.0 for f in free]], atol=1e-12)


# --- registry, config, kernel path ------------------------------------------------------------------

def test_registry_binds_the_config_and_ppo_is_the_clipped_ratio():
    assert set(POLICY_OBJECTIVES) == {"ppo", "cispo", "sapo", "gmpo", "dppo"}
    logp, old, a, m = _inputs([1.5, 0.5], [1.0, -1.0])
    from megatron_rl.algorithms import policy_loss

    ppo = objective_from_config(PolicyLossConfig(clip_low=0.2, clip_high=0.28))
    assert ppo(logp, old, a, m, agg="token-mean")[0].item() == pytest.approx(
        policy_loss(logp, old, a, m, clip_low=0.2, clip_high=0.28)[0].item())
    cispo = objective_from_config(PolicyLossConfig(kind="cispo", cispo={"is_high": 0.1}))
    assert cispo(logp, old, a, m, agg="token-mean")[0].item() == pytest.approx(
        cispo_loss(logp, old, a, m, is_high=0.1)[0].item())
    dppo = objective_from_config(PolicyLossConfig(kind="dppo", dppo={"divergence": "kl", "delta_high": 0.05}))
    assert dppo.keywords["divergence"] == "kl" and dppo.keywords["delta_high"] == 0.05


@pytest.mark.parametrize("kind", ["cispo", "sapo", "gmpo", "dppo"])
def test_the_fused_kernel_path_takes_any_objective(kind):
    """kernels.clipped_policy_loss(objective=...) equals the objective on log_softmax of the logits
    (reference backend; the Triton path computes the same logprobs, tested in tests/kernels)."""
    from megatron_rl import kernels

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=g, dtype=f64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    mask = (torch.rand(3, 5, generator=g) > 0.3).to(f64)
    lp = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    old = lp.detach() + 0.2 * torch.randn(3, 5, generator=g, dtype=f64)
    adv = torch.randn(3, 1, generator=g, dtype=f64)
    objective = objective_from_config(PolicyLossConfig(kind=kind))
    got, met = kernels.clipped_policy_loss(logits, labels, old_logprob=old, advantages=adv, response_mask=mask,
                                           agg="seq-mean-token-mean", objective=objective, backend="reference")
    want, _ = objective(lp, old, adv, mask, agg="seq-mean-token-mean")
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    assert {"pg_clipfrac", "ppo_kl", "ratio_mean", "ratio_max", "ratio_min", "pg_loss", "entropy"} <= set(met)
