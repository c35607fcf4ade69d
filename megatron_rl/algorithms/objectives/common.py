"""What every policy objective shares: fp32 inputs with padding neutralised, and the ratio metrics."""
from __future__ import annotations

import torch

from ..masked import as_float, masked_mean


def prepare(logprob, old_logprob, advantages, response_mask):
    """fp32 (fp64 stays) logprob, old logprob and detached advantages, with masked positions set to
    0 so padding holding -inf cannot turn into NaN; and the mask as floats."""
    if advantages.dim() != 2 or advantages.shape[0] != logprob.shape[0] or advantages.shape[1] not in (1, logprob.shape[1]):
        raise ValueError(f"advantages must be [B, L] or [B, 1] for logprob {tuple(logprob.shape)}, "
                         f"got {tuple(advantages.shape)} (a per-sequence [B] tensor needs [:, None])")
    logprob, old_logprob = as_float(logprob), as_float(old_logprob)
    mask = response_mask.to(logprob.dtype)
    valid = mask.bool()
    zero = torch.zeros((), dtype=logprob.dtype, device=logprob.device)
    logprob, old_logprob = torch.where(valid, logprob, zero), torch.where(valid, old_logprob, zero)
    advantages = as_float(advantages).detach().expand_as(logprob)
    return logprob, old_logprob, advantages, mask


@torch.no_grad()
def ratio_metrics(ratio: torch.Tensor, logprob, old_logprob, mask, clipped: torch.Tensor) -> dict:
    """pg_clipfrac (tokens whose gradient the objective cuts or caps), ppo_kl (k1 of old vs
    current) and the ratio's mean and extremes over valid tokens."""
    big = torch.finfo(ratio.dtype).max
    return {
        "pg_clipfrac": masked_mean(clipped.to(mask.dtype), mask),
        "ppo_kl": masked_mean(old_logprob - logprob, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": torch.where(mask > 0, ratio, -big).max(),
        "ratio_min": torch.where(mask > 0, ratio, big).min(),
    }
