"""Value loss, KL estimators/penalty/controllers and entropy."""
import math

import pytest
import torch

from numeric import assert_values
from megatron_rl.algorithms import (AdaptiveKLController, FixedKLController, entropy_from_logits, kl_estimate,
                                    kl_penalty_rewards, value_loss)

f64 = torch.float64


def test_value_loss_max_cases_hand_worked():
    #          clipped wins      equal (inside)   unclipped wins
    v = torch.tensor([[1.5, 1.1, 0.5]], dtype=f64, requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 1.0]], dtype=f64)
    ret = torch.tensor([[2.0, 0.0, 2.0]], dtype=f64)
    m = torch.ones(1, 3, dtype=f64)
    loss, met = value_loss(v, old, ret, m, clip=0.2)
    # per token: max(0.25, (1.2-2)^2=0.64)=0.64; 1.21; max(2.25, (0.8-2)^2=1.44)=2.25
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21 + 2.25) / 3)
    loss.backward()
    # 0.5 * d/dv (v - R)^2 / 3 = (v - R) / 3 where unclipped is active; 0 where the clipped term wins
    assert_values(v.grad, [[0.0, 1.1 / 3, -1.5 / 3]])
    assert met["vf_clipfrac"].item() == pytest.approx(1 / 3)


def test_value_loss_without_clip_is_half_mse():
    v = torch.tensor([[3.0, 0.0]], dtype=f64)
    loss, met = value_loss(v, torch.zeros_like(v), torch.tensor([[1.0, 0.0]], dtype=f64),
                           torch.tensor([[1.0, 0.0]], dtype=f64), clip=None)
    assert loss.item() == pytest.approx(2.0) and met["vf_clipfrac"].item() == 0.0


def test_kl_estimators_hand_worked():
    lp = torch.tensor([math.log(0.5), math.log(0.2)], dtype=f64)
    ref = torch.tensor([math.log(0.25), math.log(0.4)], dtype=f64)
    x = [math.log(2.0), math.log(0.5)]  # log pi - log pi_ref
    assert kl_estimate(lp, ref, "k1").tolist() == pytest.approx(x)
    assert kl_estimate(lp, ref, "abs").tolist() == pytest.approx([abs(v) for v in x])
    assert kl_estimate(lp, ref, "k2").tolist() == pytest.approx([0.5 * v * v for v in x])
    # k3 = pi_ref/pi - log(pi_ref/pi) - 1
    assert kl_estimate(lp, ref, "k3").tolist() == pytest.approx([0.5 + math.log(2) - 1, 2 - math.log(2) - 1])
    assert kl_estimate(lp, ref, "low_var_kl").tolist() == pytest.approx(kl_estimate(lp, ref, "k3").tolist())
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(lp, ref, "k4")


def test_low_var_kl_is_clamped_and_k3_gradient():
    lp = torch.tensor([-30.0, 0.0], dtype=f64, requires_grad=True)
    ref = torch.tensor([0.0, 0.0], dtype=f64)
    assert kl_estimate(lp, ref, "low_var_kl").tolist() == pytest.approx([10.0, 0.0])
    # verl's "k3" is the same clamped estimator (unclamped it was e^20 - 21 = 4.9e8 here)
    assert kl_estimate(lp, ref, "k3").tolist() == pytest.approx([10.0, 0.0])
    k = kl_estimate(lp, ref, "k3").sum()
    k.backward()
    assert lp.grad.tolist() == [0.0, 0.0]  # the saturated clamp passes no gradient
    lp2 = torch.tensor([0.3], dtype=f64, requires_grad=True)
    kl_estimate(lp2, torch.zeros(1, dtype=f64), "k3").sum().backward()
    assert lp2.grad.item() == pytest.approx(1 - math.exp(-0.3))  # d/dx (e^-x - 1 + x)


def test_k1_k3_unbiased_and_k3_low_variance_by_sampling():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=f64)
    q = torch.tensor([0.3, 0.3, 0.25, 0.15], dtype=f64)
    true_kl = (p * (p / q).log()).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp, ref = p.log()[x], q.log()[x]
    for kind in ("k1", "k3"):
        est = kl_estimate(lp, ref, kind)
        se = est.std().item() / math.sqrt(len(x))
        assert abs(est.mean().item() - true_kl) < 4 * se
    assert (kl_estimate(lp, ref, "k3") >= 0).all()
    assert kl_estimate(lp, ref, "k3").var() < kl_estimate(lp, ref, "k1").var()


def test_kl_penalty_rewards():
    r = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=f64)
    lp = torch.tensor([[0.0, -1.0], [-1.0, -2.0]], dtype=f64)
    ref = torch.tensor([[-0.5, -1.0], [-1.5, -1.0]], dtype=f64)
    m = torch.tensor([[1, 1], [1, 0]], dtype=f64)
    new, batch_kl = kl_penalty_rewards(r, lp, ref, m, coef=0.1, kind="k1")
    assert_values(new, [[-0.05, 1.0], [-0.05, 0.0]])
    assert batch_kl.item() == pytest.approx((0.25 + 0.5) / 2)


def test_kl_controllers():
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=256)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    ctl.update(5.4, n_steps=100)  # error -0.1
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 100 / 10000))
    other = AdaptiveKLController(1.0, 6.0, 10000)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value


def test_entropy_from_logits():
    assert entropy_from_logits(torch.zeros(2, 7)).tolist() == pytest.approx([math.log(7)] * 2, abs=1e-6)
    logits = torch.randn(3, 4, 50, dtype=f64) * 3
    p = logits.softmax(-1)
    ref = -(p * p.log()).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits), ref)
    # bf16 input is computed in fp32: close to the fp64 entropy of the same (rounded) logits
    lb = logits.to(torch.bfloat16)
    pb = lb.to(f64).softmax(-1)
    torch.testing.assert_close(entropy_from_logits(lb).to(f64), -(pb * pb.log()).sum(-1), atol=1e-5, rtol=1e-5)
