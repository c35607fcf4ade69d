"""PPO's clipped value loss for the critic."""
from __future__ import annotations

from typing import Optional

import torch

from .aggregation import aggregate
from .masked import as_float, masked_mean, masked_var


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               response_mask: torch.Tensor, clip: Optional[float] = 0.2, agg: str = "token-mean",
               normalizer=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 * agg(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)); `clip=None` is plain MSE.

    Returns (loss, metrics) with vf_clipfrac, the share of tokens where the clipped term is larger.
    """
    values, old_values, returns = as_float(values), as_float(old_values), as_float(returns).detach()
    mask = response_mask.to(values.dtype)
    unclipped = (values - returns).square()
    if clip is None:
        per_token, clip_won = unclipped, torch.zeros_like(mask, dtype=torch.bool)
    else:
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        clipped = (v_clipped - returns).square()
        per_token, clip_won = torch.maximum(unclipped, clipped), clipped > unclipped
    loss = 0.5 * aggregate(per_token, mask, agg, normalizer)
    with torch.no_grad():
        metrics = {
            "vf_clipfrac": masked_mean(clip_won.to(mask.dtype), mask),
            "vpred_mean": masked_mean(values, mask),
            # verl's definition: 1 - Var(R - V) / (Var(R) + 1e-5), unbiased masked variances
            "vf_explained_var": 1 - masked_var(returns - values, mask) / (masked_var(returns, mask) + 1e-5),
        }
    return loss, metrics
