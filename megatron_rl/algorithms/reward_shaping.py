"""Reward shaping: DAPO's soft overlong punishment."""
from __future__ import annotations

import torch


def overlong_penalty(response_lengths: torch.Tensor, max_len: int, buffer_len: int,
                     penalty: float = 1.0) -> torch.Tensor:
    """Added to the score of each response, by its length |y| (DAPO, with L_cache = buffer_len):
        0                                         |y| <= max_len - buffer_len
        ((max_len - buffer_len) - |y|) / buffer   max_len - buffer_len < |y| <= max_len
        -1                                        |y| > max_len
    times `penalty`.
    """
    if not 0 < buffer_len <= max_len:
        raise ValueError(f"buffer_len must be in (0, max_len={max_len}] (got {buffer_len})")
    lengths = response_lengths.to(torch.float32)
    soft = ((max_len - buffer_len) - lengths) / buffer_len
    return penalty * soft.clamp(-1.0, 0.0)
