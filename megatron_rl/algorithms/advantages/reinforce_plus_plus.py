"""REINFORCE++: discounted token returns whitened over the batch, and its group-baseline variant."""
from __future__ import annotations

import torch

from ..masked import as_float, masked_whiten
from .group_relative import group_stats


def discounted_returns(token_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = r_t + gamma G_{t+1} over valid positions (masked positions are skipped); 0 where masked."""
    mask = response_mask.to(token_rewards.dtype)
    running = token_rewards.new_zeros(token_rewards.shape[0])
    returns = torch.zeros_like(token_rewards)
    for t in reversed(range(token_rewards.shape[1])):
        m = mask[:, t]
        running = m * (token_rewards[:, t] + gamma * running) + (1 - m) * running
        returns[:, t] = running
    return returns * mask


def reinforce_plus_plus_advantages(token_rewards: torch.Tensor, response_mask: torch.Tensor,
                                   gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: advantages = batch-whitened discounted returns (KL usually sits in the rewards)."""
    with torch.no_grad():
        token_rewards = as_float(token_rewards)
        mask = response_mask.to(token_rewards.dtype)
        returns = discounted_returns(token_rewards, mask, gamma)
        return masked_whiten(returns, mask) * mask, returns


def reinforce_plus_plus_baseline_advantages(token_rewards: torch.Tensor, response_mask: torch.Tensor,
                                            group_index) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ with a group baseline: (score - group mean) on every token, whitened over the batch.

    A group of one is its own mean, so its centred score is 0 (verl passes the raw score through)."""
    with torch.no_grad():
        token_rewards = as_float(token_rewards)
        mask = response_mask.to(token_rewards.dtype)
        scores = (token_rewards * mask).sum(-1)
        mean, _, _ = group_stats(scores, group_index)
        centred = (scores - mean).to(token_rewards.dtype)[:, None] * mask
        advantages = masked_whiten(centred, mask) * mask
        return advantages, advantages
