"""clipped_policy_loss on logits against megatron_rl.algorithms.policy_loss on fp64 log-probabilities:
loss, metrics and d logits for every ratio level and aggregation mode, dual-clip, importance
weights, the KL and entropy terms, and the zero-gradient regions (dual-clip, clip boundaries)."""
import math

import pytest
import torch

from kernels_testlib import DEVICE, F64, assert_close64, fp64_logprobs_entropy, randint, randn
from megatron_rl.algorithms import policy_loss
from megatron_rl.algorithms.aggregation import LOSS_AGG_MODES, aggregate
from megatron_rl.algorithms.kl import KL_ESTIMATORS, kl_estimate
from megatron_rl.kernels import clipped_policy_loss

B, L, V = 4, 8, 300
LOSS_TOL = dict(atol=1e-6, rtol=1e-5)
GRAD_TOL = dict(atol=1e-7, rtol=1e-4)


def make_batch(gen, *, dtype=torch.float32):
    logits = randn(gen, B, L, V, dtype=dtype, scale=2.0)
    labels = randint(gen, V, B, L)
    with torch.no_grad():
        logprob64, _ = fp64_logprobs_entropy(logits.double(), labels)
    # old policy near the current one: ratios spread over ~[0.6, 1.6], so both clips are hit
    old_logprob = (logprob64 + 0.25 * randn(gen, B, L, dtype=F64)).float()
    advantages = randn(gen, B, L)
    mask = torch.ones(B, L, device=DEVICE)
    mask[0, 5:] = 0
    mask[2, 1] = 0
    return dict(logits=logits, labels=labels, old_logprob=old_logprob, advantages=advantages, response_mask=mask)


def ours(batch, **kwargs):
    logits = batch["logits"].detach().clone().requires_grad_(True)
    loss, metrics = clipped_policy_loss(logits, batch["labels"], old_logprob=batch["old_logprob"],
                                        advantages=batch["advantages"], response_mask=batch["response_mask"],
                                        backend="triton", **kwargs)
    loss.backward()
    return loss.detach(), metrics, logits.grad


def by_hand(batch, *, kl_coef=0.0, entropy_coef=0.0, ref_logprob=None, kl_estimator="low_var_kl",
            temperature=1.0, **policy_kwargs):
    """policy_loss (+ KL, - entropy) composed from the algorithm library on fp64 log-probabilities."""
    logits = batch["logits"].detach().double().requires_grad_(True)
    logprob, entropy = fp64_logprobs_entropy(logits, batch["labels"], temperature=temperature)
    mask, agg = batch["response_mask"], policy_kwargs.get("agg", "token-mean")
    normalizer = policy_kwargs.get("normalizer")
    loss, metrics = policy_loss(logprob, batch["old_logprob"], batch["advantages"], mask, **policy_kwargs)
    metrics["pg_loss"] = loss.detach()
    entropy_term = aggregate(entropy, mask, agg, normalizer)
    metrics["entropy"] = entropy_term.detach()
    loss = loss - entropy_coef * entropy_term
    if ref_logprob is not None:
        kl_term = aggregate(kl_estimate(logprob, ref_logprob, kl_estimator), mask, agg, normalizer)
        metrics["kl_loss"] = kl_term.detach()
        loss = loss + kl_coef * kl_term
    loss.backward()
    return loss.detach(), metrics, logits.grad


def assert_matches(got, expected):
    (loss, metrics, grad), (ref_loss, ref_metrics, ref_grad) = got, expected
    assert_close64(loss, ref_loss, **LOSS_TOL)
    assert metrics.keys() == ref_metrics.keys()
    for name in ref_metrics:
        assert_close64(metrics[name], ref_metrics[name], **LOSS_TOL, msg=name)
    assert_close64(grad, ref_grad, **GRAD_TOL)


CASES = [  # (ratio, agg, dual_clip, with is_weights): every ratio level x every aggregation mode
    (ratio, agg, 3.0 if i % 2 else None, i % 3 == 0)
    for i, (ratio, agg) in enumerate((r, a) for r in ("token", "sequence", "sequence-token") for a in LOSS_AGG_MODES)
]


@pytest.mark.parametrize("ratio,agg,dual_clip,weighted", CASES)
def test_matches_policy_loss(gen, ratio, agg, dual_clip, weighted):
    batch = make_batch(gen)
    kwargs = dict(clip_low=0.2, clip_high=0.28, dual_clip=dual_clip, ratio=ratio, agg=agg)
    if weighted:
        kwargs["is_weights"] = randn(gen, B, L).abs()
    if agg == "token-mean" and ratio == "token":
        kwargs["normalizer"] = torch.tensor(50.0, device=DEVICE)  # a global denominator from micro-batching
    assert_matches(ours(batch, **kwargs), by_hand(batch, **kwargs))


@pytest.mark.parametrize("kl_estimator", KL_ESTIMATORS)
def test_kl_and_entropy_terms(gen, kl_estimator):
    batch = make_batch(gen)
    ref_logprob = batch["old_logprob"] + 0.1 * randn(gen, B, L)
    kwargs = dict(ref_logprob=ref_logprob, kl_coef=0.05, kl_estimator=kl_estimator, entropy_coef=0.01,
                  agg="seq-mean-token-mean", temperature=0.8)
    got = ours(batch, **kwargs)
    assert_matches(got, by_hand(batch, **kwargs))
    # without the coefficients the terms are only reported
    loss, metrics, _ = ours(batch, ref_logprob=ref_logprob, kl_estimator=kl_estimator, temperature=0.8,
                            agg="seq-mean-token-mean")
    assert_close64(loss, metrics["pg_loss"], atol=0, rtol=0)
    assert_close64(metrics["kl_loss"], got[1]["kl_loss"], atol=0, rtol=0)


def test_bf16_logits(gen):
    batch = make_batch(gen, dtype=torch.bfloat16)
    loss, metrics, grad = ours(batch, dual_clip=3.0, entropy_coef=0.01)
    ref_loss, ref_metrics, ref_grad = by_hand(batch, dual_clip=3.0, entropy_coef=0.01)
    assert grad.dtype == torch.bfloat16
    assert_close64(loss, ref_loss, **LOSS_TOL)
    assert_close64(grad, ref_grad, atol=1e-7, rtol=2**-7)


def test_per_token_outputs(gen):
    batch = make_batch(gen)
    loss, metrics, per_token = clipped_policy_loss(batch["logits"], batch["labels"], old_logprob=batch["old_logprob"],
                                                   advantages=batch["advantages"],
                                                   response_mask=batch["response_mask"], return_per_token=True)
    ref_lp, ref_ent = fp64_logprobs_entropy(batch["logits"].double(), batch["labels"])
    assert_close64(per_token["logprob"], ref_lp, atol=2e-5, rtol=1e-5)
    assert_close64(per_token["entropy"], ref_ent, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# zero-gradient regions: exact zeros in d logits, not small numbers

def _with_ratios(gen, ratios, advantages):
    """A one-sequence batch whose token ratios are exactly `ratios` w.r.t. the kernel's own logprobs."""
    n = len(ratios)
    logits = randn(gen, 1, n, V, scale=2.0)
    labels = randint(gen, V, 1, n)
    with torch.no_grad():
        logprob, _ = clipped_policy_loss(logits, labels, old_logprob=torch.zeros(1, n, device=DEVICE),
                                         advantages=torch.ones(1, n, device=DEVICE),
                                         response_mask=torch.ones(1, n, device=DEVICE),
                                         return_per_token=True)[2].values()
    old = logprob.double() - torch.tensor([[math.log(r) for r in ratios]], dtype=F64, device=DEVICE)
    return dict(logits=logits, labels=labels, old_logprob=old.float(),
                advantages=torch.tensor([advantages], device=DEVICE), response_mask=torch.ones(1, n, device=DEVICE))


def test_regression_dual_clip_region_has_exactly_zero_gradient(gen):
    # A < 0 with ratio > dual_clip: the loss is the constant -A * dual_clip
    batch = _with_ratios(gen, [5.0, 4.0, 2.5, 1.1], [-1.0, -0.5, -1.0, -1.0])
    loss, metrics, grad = ours(batch, dual_clip=3.0)
    row_is_zero = (grad[0] == 0).all(-1)
    assert row_is_zero.tolist() == [True, True, False, False]
    assert metrics["pg_dual_clipfrac"].item() == pytest.approx(0.5)
    assert_close64(loss, torch.tensor((3.0 + 1.5 + 2.5 + 1.1) / 4), atol=1e-5, rtol=1e-5)


def test_regression_clip_boundaries(gen):
    eps = 0.2
    # just outside 1 + eps with A > 0 and just outside 1 - eps with A < 0: the clipped branch wins,
    # gradient exactly 0; just inside: the unclipped branch, gradient flows
    ratios = [1 + eps + 1e-3, 1 + eps - 1e-3, 1 - eps - 1e-3, 1 - eps + 1e-3]
    batch = _with_ratios(gen, ratios, [1.0, 1.0, -1.0, -1.0])
    _, metrics, grad = ours(batch, clip_low=eps, clip_high=eps)
    row_is_zero = (grad[0] == 0).all(-1)
    assert row_is_zero.tolist() == [True, False, True, False]
    assert metrics["pg_clipfrac"].item() == pytest.approx(0.5)
    assert metrics["pg_clipfrac_high"].item() == pytest.approx(0.25)
    assert metrics["pg_clipfrac_low"].item() == pytest.approx(0.25)


def test_kl_needs_reference_logprobs(gen):
    batch = make_batch(gen)
    with pytest.raises(ValueError, match="ref_logprob"):
        ours(batch, kl_coef=0.1)
