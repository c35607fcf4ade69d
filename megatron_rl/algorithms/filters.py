"""Sample filters: DAPO's dynamic sampling keeps only groups whose rewards disagree."""
from __future__ import annotations

import torch

from .masked import group_ids


def informative_group_mask(scores: torch.Tensor, group_index) -> torch.Tensor:
    """True for samples whose group has at least two different scores.

    A group where every sample has the same reward (all right, all wrong) gets zero
    group-relative advantage and contributes no gradient: DAPO drops it and samples more prompts.
    """
    # max != min, not std > 0: a rounded fp32 group mean gives identical scores a tiny nonzero std
    ids, num_groups = group_ids(group_index, scores.device)
    hi = scores.new_full((num_groups,), float("-inf")).scatter_reduce(0, ids, scores, "amax")
    lo = scores.new_full((num_groups,), float("inf")).scatter_reduce(0, ids, scores, "amin")
    return (hi > lo)[ids]
