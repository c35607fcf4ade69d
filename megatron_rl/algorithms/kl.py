"""KL(pi || pi_ref) per token: estimators, the PPO reward penalty and its coefficient controllers.

With log_ratio = log pi - log pi_ref on tokens sampled from pi (Schulman's k1/k2/k3):
  k1  log_ratio                          unbiased, can be negative
  abs |log_ratio|
  k2  0.5 * log_ratio^2                  (verl's "mse")
  k3  exp(-log_ratio) - 1 + log_ratio    unbiased, always >= 0 (r - log r - 1 with r = pi_ref/pi);
                                         log-ratio clamped to [-20, 20] against overflow and the
                                         result to [-10, 10]: one token far below the reference
                                         would otherwise add up to e^20 to the loss
  low_var_kl  the same estimator under verl's other name (verl's "k3" and "low_var_kl" agree)
As a loss term (GRPO) use `aggregate(kl_estimate(...), mask, mode)`; as a reward penalty (PPO,
REINFORCE++) use `kl_penalty_rewards`.
"""
from __future__ import annotations

import torch

from .masked import as_float, masked_mean

KL_ESTIMATORS = ("k1", "abs", "k2", "k3", "low_var_kl")


def kl_estimate(logprob: torch.Tensor, ref_logprob: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token estimate, in fp32 (fp64 for fp64 inputs) whatever the input dtype."""
    log_ratio = as_float(logprob) - as_float(ref_logprob)
    if kind == "k1":
        return log_ratio
    if kind == "abs":
        return log_ratio.abs()
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind in ("k3", "low_var_kl"):
        # expm1 keeps k3 >= 0 for tiny log-ratios, where exp(-x) - 1 + x cancels to noise
        log_ratio = log_ratio.clamp(-20, 20)
        return (torch.expm1(-log_ratio) + log_ratio).clamp(-10, 10)
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {', '.join(KL_ESTIMATORS)}")


def kl_penalty_rewards(token_rewards: torch.Tensor, logprob: torch.Tensor, ref_logprob: torch.Tensor,
                       response_mask: torch.Tensor, coef: float, kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """r_t - coef * KL_t on valid tokens; also returns the batch KL (mean over sequences of the
    per-sequence token mean), the quantity the adaptive controller tracks."""
    mask = response_mask.to(token_rewards.dtype)
    kl = torch.where(mask.bool(), kl_estimate(logprob, ref_logprob, kind).to(token_rewards.dtype), 0.0) * mask
    valid_rows = mask.sum(-1) > 0  # rows filtered out (e.g. by dynamic sampling) are not zero-KL samples
    batch_kl = masked_mean(kl, mask, dim=-1)[valid_rows].mean() if valid_rows.any() else kl.new_zeros(())
    return token_rewards - coef * kl, batch_kl


class FixedKLController:
    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Proportional controller (Ziegler et al. 2019): moves the coefficient so the KL tracks `target`.

    error = clip(KL / target - 1, -0.2, 0.2);  coef *= 1 + error * n_steps / horizon
    """

    def __init__(self, coef: float, target: float, horizon: int):
        super().__init__(coef)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
