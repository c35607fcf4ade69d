"""GMPO (arXiv 2507.20673): the geometric mean of the token ratios, clipped per token in log space.

    x_t = log r_t;  x~_t = x_t capped at clip_high where A > 0, floored at -clip_low where A < 0
    (PPO's pessimistic side, applied in log space);  s = exp(mean_t x~_t)
    loss_i = -A_i * s_i   (A_i the sequence's mean advantage; GMPO is sequence-level)

Each token's loss is its sequence's loss, so `agg="seq-mean-token-mean"` (the preset) gives verl's
mean over sequences. A capped token has no gradient; the others get -A s / |y| d log pi.
"""
from __future__ import annotations

import torch

from ..aggregation import aggregate
from ..masked import masked_mean
from .common import prepare, ratio_metrics


def gmpo_loss(logprob, old_logprob, advantages, response_mask, *, clip_low: float = 0.4, clip_high: float = 0.4,
              agg: str = "seq-mean-token-mean", normalizer=None, is_weights=None, **_):
    logprob, old_logprob, advantages, mask = prepare(logprob, old_logprob, advantages, response_mask)
    log_ratio = logprob - old_logprob
    sign = torch.sign(advantages)
    capped = sign * torch.minimum(sign * log_ratio, sign * log_ratio.clamp(-clip_low, clip_high))
    seq_adv = masked_mean(advantages, mask, dim=-1)[:, None]
    seq_ratio = torch.exp(masked_mean(capped, mask, dim=-1))[:, None]
    per_token = (-seq_adv * seq_ratio).expand_as(logprob)
    if is_weights is not None:  # a sequence's weight: the geometric mean of its tokens' weights
        log_w = masked_mean(torch.log(is_weights.detach().clamp(min=1e-10)), mask, dim=-1)[:, None]
        per_token = per_token * torch.exp(log_w)
    loss = aggregate(per_token, mask, agg, normalizer)
    clipped = capped.detach() != log_ratio.detach()
    return loss, ratio_metrics(torch.exp(log_ratio.detach()), logprob, old_logprob, mask, clipped=clipped)
