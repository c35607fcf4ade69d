"""SAPO (arXiv 2511.20347): a soft, sign-dependent gate on the ratio instead of the hard clip.

    f_tau(r) = sigmoid(tau (r - 1)) * 4 / tau,   loss_t = -f_tau(r_t) * A_t,
    tau = tau_pos where A_t > 0, tau_neg otherwise

At r = 1 the gradient is exactly the policy gradient (d f / d log r = 4 s (1 - s) r = 1); away from
1 it decays smoothly instead of dropping to 0. Defaults tau_pos 1.0, tau_neg 1.05 (verl's).
"""
from __future__ import annotations

import torch

from ..aggregation import aggregate
from .common import prepare, ratio_metrics


def sapo_loss(logprob, old_logprob, advantages, response_mask, *, tau_pos: float = 1.0, tau_neg: float = 1.05,
              agg: str = "seq-mean-token-mean", normalizer=None, is_weights=None, log_ratio_clamp: float = 20.0, **_):
    logprob, old_logprob, advantages, mask = prepare(logprob, old_logprob, advantages, response_mask)
    ratio = torch.exp((logprob - old_logprob).clamp(-log_ratio_clamp, log_ratio_clamp))
    tau = torch.where(advantages > 0, ratio.new_tensor(tau_pos), ratio.new_tensor(tau_neg))  # in the inputs' dtype
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    per_token = -gate * advantages
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, agg, normalizer)
    # nothing is cut: report where the gate has lost half its slope (|tau (r - 1)| > 1.76)
    faded = (tau * (ratio.detach() - 1.0)).abs() > 1.7627
    return loss, ratio_metrics(ratio.detach(), logprob, old_logprob, mask, clipped=faded)
