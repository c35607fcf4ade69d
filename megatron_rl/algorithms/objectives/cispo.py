"""CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance weight, not the update.

    loss_t = -sg(clip(r_t, 1 - is_low, 1 + is_high)) * A_t * log pi(y_t)

Every token keeps a gradient (-w A d log pi), including the low-probability ones a PPO clip would
zero after the first update; the weight only caps how much one token counts. is_low None: no
lower bound (the paper tuned only the upper one).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..aggregation import aggregate
from .common import prepare, ratio_metrics


def cispo_loss(logprob, old_logprob, advantages, response_mask, *, is_high: float = 0.2,
               is_low: Optional[float] = None, agg: str = "token-mean", normalizer=None, is_weights=None,
               log_ratio_clamp: float = 20.0, **_):
    logprob, old_logprob, advantages, mask = prepare(logprob, old_logprob, advantages, response_mask)
    ratio = torch.exp((logprob - old_logprob).clamp(-log_ratio_clamp, log_ratio_clamp))
    weight = ratio.detach().clamp(min=None if is_low is None else 1.0 - is_low, max=1.0 + is_high)
    per_token = -weight * advantages * logprob
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, agg, normalizer)
    return loss, ratio_metrics(ratio.detach(), logprob, old_logprob, mask, clipped=weight != ratio.detach())
