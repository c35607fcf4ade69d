"""On-policy distillation's per-token advantage, hand-worked, and how the trainer combines it."""
import math

import pytest
import torch

from numeric import assert_values
from megatron_rl.algorithms import distillation_advantages
from megatron_rl.config.schema import AlgorithmConfig, DistillConfig
from megatron_rl.trainer.losses import advantages_and_returns

f64 = torch.float64


def test_distillation_advantage_hand_worked():
    # student / teacher probabilities of the sampled tokens: (0.5, 0.25), (0.2, 0.4), padding (-inf)
    student = torch.tensor([[math.log(0.5), math.log(0.2), -math.inf]], dtype=f64)
    teacher = torch.tensor([[math.log(0.25), math.log(0.4), 0.0]], dtype=f64)
    mask = torch.tensor([[1, 1, 0]], dtype=f64)
    adv, reverse_kl = distillation_advantages(student, teacher, mask, coef=2.0)
    assert_values(adv, [[2 * math.log(0.5), 2 * math.log(2.0), 0.0]], atol=1e-12)  # teacher - student, x coef
    assert reverse_kl.item() == pytest.approx((math.log(2.0) + math.log(0.5)) / 2)  # mean(student - teacher) = 0


def _batch():
    mask = torch.tensor([[0, 1, 1], [0, 1, 1]], dtype=torch.float32)
    rewards = torch.zeros(2, 3)
    rewards[:, -1] = torch.tensor([1.0, 0.0])
    return {"token_rewards": rewards, "response_mask": mask, "group_index": torch.tensor([0, 0]),
            "old_logprobs": torch.tensor([[0, -1.0, -2.0], [0, -0.5, -0.5]]),
            "teacher_logprobs": torch.tensor([[0, -0.5, -2.0], [0, -1.5, -0.5]])}


@pytest.mark.parametrize("mode", ["add", "alone"])
def test_the_trainer_adds_the_term_or_uses_it_alone(mode):
    batch = _batch()
    grpo, _ = advantages_and_returns(AlgorithmConfig(), batch, kl_coef=None)
    out, metrics = advantages_and_returns(AlgorithmConfig(), batch, kl_coef=None,
                                          distill=DistillConfig(enabled=True, teacher_path="t", coef=0.5, mode=mode))
    term = torch.tensor([[0, 0.25, 0.0], [0, -0.5, 0.0]])  # 0.5 * (teacher - student) on response tokens
    expected = term if mode == "alone" else grpo["advantages"] + term
    assert torch.allclose(out["advantages"], expected, atol=1e-6)
    assert metrics["distill/reverse_kl"] == pytest.approx((-0.5 + 0 + 1.0 + 0) / 4)


def test_distill_needs_a_teacher():
    with pytest.raises(ValueError, match="distill.teacher_path"):
        DistillConfig(enabled=True)
