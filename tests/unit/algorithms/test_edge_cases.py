"""Edge cases found in review: low-precision inputs, non-finite padding, detached advantages,
misshaped inputs, rounding in group statistics, and metric definitions matching verl."""
import math

import pytest
import torch

from megatron_rl.algorithms import (ADVANTAGE_ESTIMATORS, aggregate, global_normalizer, informative_group_mask,
                                    kl_estimate, kl_penalty_rewards, mismatch_importance_weights, policy_loss,
                                    value_loss)

f64 = torch.float64


# --- 1. fp16 (a supported model.dtype): counts and ratios are computed in the logprob dtype ---------------

def test_fp16_policy_loss_normalizer_does_not_overflow():
    b, l = 35, 2048  # 71,680 valid tokens in one micro-batch
    lp = torch.full((b, l), -1.0, dtype=torch.float16, requires_grad=True)
    loss, _ = policy_loss(lp, lp.detach(), torch.ones(b, l), torch.ones(b, l, dtype=torch.bool))
    loss.backward()
    # an fp16 token count overflowed here: the loss was -0.0 with zero gradient
    assert loss.item() == pytest.approx(-1.0, rel=1e-3)
    assert lp.grad.float().abs().sum() > 0


def test_fp16_large_log_ratio_at_padding_gives_finite_loss_and_grad():
    h = torch.float16
    lp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=h, requires_grad=True)  # position 2 is padding
    old = torch.tensor([[-1.0, -2.0, -20.0]], dtype=h)
    adv = torch.tensor([[1.0, 1.0, 0.0]], dtype=h)
    loss, _ = policy_loss(lp, old, adv, torch.tensor([[1, 1, 0]], dtype=torch.bool))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(lp.grad).all()


# --- 2. KL estimators evaluated in the input dtype (k3 ">= 0" is violated) -----------------------------

def test_k3_is_nonnegative_for_bf16_inputs():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(10_000, generator=g) * 5
    ref = lp + torch.randn(10_000, generator=g) * 0.01
    for kind in ("k3", "low_var_kl"):
        k = kl_estimate(lp.bfloat16(), ref.bfloat16(), kind)
        assert (k >= 0).all(), kind
        # and equals the exact k3 of the same (rounded) inputs
        exact = kl_estimate(lp.bfloat16().double(), ref.bfloat16().double(), kind)
        torch.testing.assert_close(k.double(), exact, atol=1e-6, rtol=1e-2)


def test_k3_is_nonnegative_for_small_fp32_log_ratios():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * 1e-3
    assert (kl_estimate(x, torch.zeros_like(x), "k3") >= 0).all()


# --- 3. dynamic-sampling filter keeps groups whose scores are all equal ----------------------------------

def test_informative_group_mask_drops_identical_scores():
    for value, n in [(0.9, 3), (0.1, 7), (0.1, 16)]:
        keep = informative_group_mask(torch.full((n,), value), [0] * n)
        assert not keep.any(), (value, n)


# --- 4. batch KL for the adaptive controller is diluted by fully masked rows -----------------------------

def test_batch_kl_ignores_fully_masked_rows():
    lp = torch.zeros(4, 2, dtype=f64)
    m = torch.tensor([[1, 1], [1, 1], [0, 0], [0, 0]], dtype=f64)  # rows 2-3 dropped by the DAPO filter
    _, batch_kl = kl_penalty_rewards(torch.zeros(4, 2, dtype=f64), lp, lp - 0.5, m, coef=0.1, kind="k1")
    assert batch_kl.item() == pytest.approx(0.5)


# --- 5. unclamped k3 overflows (and differs from verl's "k3", which is low_var_kl) -----------------------

def test_k3_is_finite_for_very_negative_log_ratio():
    x = torch.tensor([-100.0], requires_grad=True)
    k = kl_estimate(x, torch.tensor([-1.0]), "k3")
    k.sum().backward()
    assert torch.isfinite(k).all() and torch.isfinite(x.grad).all()


# --- 7. non-finite values at masked positions poison the result -------------------------------------------

def test_policy_loss_ignores_non_finite_padding():
    inf = float("inf")
    lp = torch.tensor([[-1.0, -1.2, -inf]], requires_grad=True)
    old = torch.tensor([[-1.1, -1.2, -inf]])
    loss, _ = policy_loss(lp, old, torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert math.isfinite(loss.item())


def test_mismatch_sequence_weights_ignore_non_finite_padding():
    m = torch.tensor([[1.0, 1.0, 0.0]])
    w, _, _ = mismatch_importance_weights(torch.tensor([[-1.0, -1.0, 0.0]]), torch.tensor([[-1.1, -0.9, -float("inf")]]),
                                          m, level="sequence")
    assert torch.isfinite(w).all()


# --- 8. GRPO / RLOO advantages are not detached ------------------------------------------------------------

def test_group_advantages_are_detached():
    r = torch.zeros(2, 3)
    r[:, -1] = torch.tensor([1.0, 0.0])
    r.requires_grad_(True)
    for name in ("grpo", "rloo"):
        adv, _ = ADVANTAGE_ESTIMATORS[name](token_rewards=r, response_mask=torch.ones(2, 3), group_index=[0, 0])
        assert not adv.requires_grad, name


# --- 9. the -norm constant is rank-local ------------------------------------------------------------------

def test_sum_norm_needs_a_global_constant():
    x = torch.ones(4, 8, dtype=f64)
    m = (torch.arange(8)[None] < torch.tensor([2, 3, 8, 5])[:, None]).to(f64)
    whole = aggregate(x, m, "seq-mean-token-sum-norm")                        # 18 / (8 * 4) = 0.5625
    ranks = [(x[:2, :3], m[:2, :3]), (x[2:], m[2:])]  # two DP ranks, each padded to its own longest
    norm = global_normalizer([ms for _, ms in ranks], "seq-mean-token-sum-norm", norm_len=8)
    total = sum(aggregate(xs, ms, "seq-mean-token-sum-norm", normalizer=norm) for xs, ms in ranks)
    assert total.item() == pytest.approx(whole.item()) == pytest.approx(18 / 32)  # the split is exact
    # leaving norm_len out would use each rank's own padding (3 and 8)
    with pytest.raises(ValueError):
        global_normalizer([m[:2, :3]], "seq-mean-token-sum-norm")


# --- 10. per-sequence advantages broadcast silently ---------------------------------------------------------

def test_policy_loss_rejects_misshaped_advantages():
    lp = torch.zeros(2, 2, dtype=f64)
    with pytest.raises(ValueError):
        policy_loss(lp + 0.1, lp, torch.tensor([1.0, -1.0], dtype=f64), torch.ones(2, 2, dtype=f64))


# --- 11. vf_explained_var is not verl's metric --------------------------------------------------------------

def test_vf_explained_var_matches_verl_definition():
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=f64)
    ret = v + 1.0  # a critic with a constant bias explains all the variance
    _, met = value_loss(v, v, ret, torch.ones_like(v), clip=None)
    d, r = (ret - v).flatten(), ret.flatten()
    assert met["vf_explained_var"].item() == pytest.approx((1 - d.var() / (r.var() + 1e-5)).item())  # 0.2 vs 1.0
