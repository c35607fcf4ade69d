"""Group-relative outcome advantages: GRPO, Dr.GRPO (no std) and RLOO (leave-one-out baseline)."""
from __future__ import annotations

from typing import Optional

import torch

from ..masked import group_ids


def group_stats(scores: torch.Tensor, group_index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (group mean, unbiased group std, group size); std is 0 for a group of one."""
    ids, num_groups = group_ids(group_index, scores.device)
    scores = scores.to(torch.float64) if scores.dtype == torch.float64 else scores.float()
    size = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device).index_add_(0, ids, torch.ones_like(scores))
    total = torch.zeros_like(size).index_add_(0, ids, scores)
    mean = (total / size)[ids]
    sq_dev = torch.zeros_like(size).index_add_(0, ids, (scores - mean) ** 2)
    std = (sq_dev / (size - 1).clamp(min=1)).sqrt()[ids]
    return mean, std, size[ids]


def group_relative_advantages(scores: torch.Tensor, group_index, std_normalize: Optional[bool] = None,
                              leave_one_out: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Per-sequence advantages from the scores of the n samples of each prompt.

    GRPO (defaults): (r - mean_g) / (std_g + eps), std the unbiased torch.std of the group.
    Dr.GRPO: std_normalize=False, r - mean_g.
    RLOO: leave_one_out=True, r - mean of the *other* samples = n/(n-1) (r - mean_g); RLOO does not
    divide by the std, so `std_normalize` defaults to False there (pass True to get both).
    A group of one has no baseline and gets advantage 0.
    """
    if std_normalize is None:
        std_normalize = not leave_one_out
    mean, std, size = group_stats(scores, group_index)
    adv = scores.to(mean.dtype) - mean
    if leave_one_out:
        adv = adv * size / (size - 1).clamp(min=1)
    if std_normalize:
        adv = adv / (std + eps)
    return torch.where(size > 1, adv, torch.zeros_like(adv))
