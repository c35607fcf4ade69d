"""Generalized Advantage Estimation (PPO with a critic)."""
from __future__ import annotations

import torch

from ..masked import as_float, masked_whiten


def gae(token_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 1.0, whiten: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t = sum_l (gamma*lam)^l delta_{t+l},  delta_t = r_t + gamma V(s_{t+1}) - V(s_t).

    Positions where the mask is 0 are skipped, not treated as episode ends: the recursion passes
    through them unchanged (so an interior mask, e.g. tool output inside a response, links the
    tokens around it), and V after the last valid token is 0. Returns = A + V, taken before the
    optional masked whitening of A. Both outputs are 0 where the mask is 0, and fp32 (fp64 for
    fp64 inputs) whatever the input dtype.
    """
    values, token_rewards = as_float(values).detach(), as_float(token_rewards).detach()
    mask = response_mask.to(values.dtype)
    batch, length = values.shape
    next_value = values.new_zeros(batch)
    running = values.new_zeros(batch)
    advantages = torch.zeros_like(values)
    with torch.no_grad():
        for t in reversed(range(length)):
            m = mask[:, t]
            delta = token_rewards[:, t] + gamma * next_value - values[:, t]
            running = m * (delta + gamma * lam * running) + (1 - m) * running
            next_value = m * values[:, t] + (1 - m) * next_value
            advantages[:, t] = running
        returns = (advantages + values) * mask
        if whiten:
            advantages = masked_whiten(advantages, mask)
        advantages = advantages * mask
    return advantages, returns
