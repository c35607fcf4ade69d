"""Process-supervision GRPO (DeepSeekMath): per-step rewards normalized over the group."""
from __future__ import annotations

import torch

from ..masked import group_ids
from .group_relative import group_stats


def process_supervision_advantages(step_rewards: torch.Tensor, step_end_mask: torch.Tensor,
                                   response_mask: torch.Tensor, group_index,
                                   eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """A token's advantage is the sum of the normalized rewards of the steps ending at or after it.

    `step_rewards[b, t]` holds the reward of the step that ends at token t (where
    `step_end_mask[b, t] == 1`). Each reward is normalized by the mean and unbiased std of all step
    rewards in its group (the n samples of one prompt): r~ = (r - mean) / (std + eps); a group with a
    single step reward normalizes it to 0.
    """
    with torch.no_grad():
        ends = step_end_mask.to(torch.bool) & response_mask.to(torch.bool)
        ids, _ = group_ids(group_index, step_rewards.device)
        rewards = step_rewards.float() if step_rewards.dtype != torch.float64 else step_rewards
        vals = rewards[ends]
        mean, std, _ = group_stats(vals, ids[:, None].expand_as(rewards)[ends])  # over every step of a group
        normalized = torch.zeros_like(rewards)
        normalized[ends] = (vals - mean) / (std + eps)
        # reverse cumulative sum along the response: sum over steps ending at or after t
        advantages = normalized.flip(-1).cumsum(-1).flip(-1) * response_mask.to(rewards.dtype)
        return advantages, advantages
