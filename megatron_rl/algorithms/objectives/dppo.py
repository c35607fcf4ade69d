"""DPPO (arXiv 2602.04879): a trust region on the divergence of the sampled token's probability,
not on its ratio.

With p = pi(y_t), p_a its probability under the anchor policy (the rollout engine's by default,
which the paper found to matter for stability) and w = min(p / p_a, ratio_cap), detached:

    loss_t = -A_t * w * keep_t * log p
    keep_t = 0 where the update leaves the region in the advantage's direction:
      tv:  A > 0 and p - p_a > delta_high,   A < 0 and p_a - p > delta_low
      kl:  the binary KL  p_a log(p_a / p) + (1 - p_a) log((1 - p_a) / (1 - p))  above delta_high
           (A > 0, p > p_a) or delta_low (A < 0, p < p_a)

A low-probability token may move far in ratio while it stays inside the region, and a
high-probability one is stopped by a small ratio change, the opposite of PPO's clip.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..aggregation import aggregate
from .common import prepare, ratio_metrics

DIVERGENCES = ("tv", "kl")


def dppo_loss(logprob, old_logprob, advantages, response_mask, *, anchor_logprob: Optional[torch.Tensor] = None,
              divergence: str = "tv", delta_low: float = 0.2, delta_high: float = 0.2, ratio_cap: float = 10.0,
              agg: str = "token-mean", normalizer=None, is_weights=None, **_):
    """anchor_logprob: the policy the region is centred on (the rollout logprobs); None: old_logprob."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown DPPO divergence {divergence!r}; expected one of {', '.join(DIVERGENCES)}")
    logprob, old_logprob, advantages, mask = prepare(logprob, old_logprob, advantages, response_mask)
    anchor = old_logprob if anchor_logprob is None else torch.where(mask.bool(), anchor_logprob.to(logprob.dtype), 0.0)
    with torch.no_grad():
        p, p_a = torch.exp(logprob), torch.exp(anchor)
        if divergence == "tv":
            out_up, out_down = p - p_a > delta_high, p_a - p > delta_low
        else:
            tiny = 1e-8
            kl = p_a * (anchor - logprob) + (1 - p_a) * torch.log((1 - p_a + tiny) / (1 - p + tiny))
            out_up, out_down = (kl > delta_high) & (p > p_a), (kl > delta_low) & (p < p_a)
        outside = torch.where(advantages > 0, out_up, torch.where(advantages < 0, out_down, torch.zeros_like(out_up)))
        weight = torch.exp((logprob - anchor).clamp(max=20.0)).clamp(max=ratio_cap) * (~outside)
    per_token = -advantages * weight * logprob
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, agg, normalizer)
    ratio = torch.exp((logprob - old_logprob).detach().clamp(-20, 20))
    return loss, ratio_metrics(ratio, logprob, old_logprob, mask, clipped=outside)
