"""Train/inference mismatch correction.

The rollout engine (SGLang, bf16 kernels) and the trainer (Megatron) assign slightly different
probabilities to the same tokens, so the samples are off-policy for the trained policy even at the
first step. With w = pi_train(y) / pi_rollout(y) from the old (pre-update) train logprobs and the
engine's logprobs:
  truncate (TIS)  weight = min(w, upper)                         every token kept
  mask (MIS)      weight = w inside [lower, upper], token (or sequence) dropped from the loss outside
Levels: token (w_t), sequence (prod_t w_t), geometric (exp(mean_t log w_t)), the last two
broadcast over the sequence.
"""
from __future__ import annotations

from typing import Optional

import torch

from .kl import kl_estimate
from .masked import as_float, masked_mean, masked_sum

MISMATCH_LEVELS = ("token", "sequence", "geometric")
MISMATCH_MODES = ("truncate", "mask")


def mismatch_importance_weights(old_logprob: torch.Tensor, rollout_logprob: torch.Tensor,
                                response_mask: torch.Tensor, level: str = "token", mode: str = "truncate",
                                upper: float = 2.0, lower: Optional[float] = None
                                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Returns (weights [B, L], keep mask [B, L], metrics); the trainer multiplies its response
    mask by `keep` and passes `weights` as the policy loss's `is_weights`."""
    if level not in MISMATCH_LEVELS or mode not in MISMATCH_MODES:
        raise ValueError(f"mismatch level/mode must be in {MISMATCH_LEVELS}/{MISMATCH_MODES} (got {level}/{mode})")
    with torch.no_grad():
        old_logprob, rollout_logprob = as_float(old_logprob), as_float(rollout_logprob)
        mask = response_mask.to(old_logprob.dtype)
        diff = torch.where(mask.bool(), old_logprob - rollout_logprob, 0.0)  # padding may hold -inf
        log_w = diff
        if level == "sequence":
            log_w = masked_sum(log_w, mask, dim=-1)[:, None].expand_as(log_w)
        elif level == "geometric":
            log_w = masked_mean(log_w, mask, dim=-1)[:, None].expand_as(log_w)
        w = torch.exp(log_w.clamp(-20, 20))
        if mode == "truncate":
            weights, keep = w.clamp(max=upper), mask.bool()
        else:
            low = lower if lower is not None else 1.0 / upper
            keep = mask.bool() & (w <= upper) & (w >= low)
            weights = w * keep
        gap = diff.abs()
        metrics = {
            "mismatch_weight_mean": masked_mean(weights, mask),
            "mismatch_clipped_frac": masked_mean((w > upper).to(mask.dtype), mask),
            "mismatch_masked_frac": masked_mean((~keep).to(mask.dtype), mask),
            "mismatch_abs_logprob_gap": masked_mean(gap, mask),
            # KL(pi_rollout || pi_train) on the engine's own samples
            "mismatch_kl_k3": masked_mean(kl_estimate(-diff, torch.zeros_like(diff), "k3"), mask),
        }
    return weights * mask, keep, metrics
