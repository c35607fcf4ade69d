"""Sample filters: DAPO's dynamic sampling keeps only groups whose rewards disagree."""
from __future__ import annotations

import torch

from .advantages.group_relative import group_stats


def informative_group_mask(scores: torch.Tensor, group_index) -> torch.Tensor:
    """True for samples whose group has at least two different scores.

    A group where every sample has the same reward (all right, all wrong) gets zero
    group-relative advantage and contributes no gradient: DAPO drops it and samples more prompts.
    """
    _, std, _ = group_stats(scores, group_index)
    return std > 0
