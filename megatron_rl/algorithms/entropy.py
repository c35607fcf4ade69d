"""Entropy of the token distribution, for the entropy bonus and as a metric.

This is the plain reference over full logits; the fused, vocab-parallel kernel in
megatron_rl.kernels computes the same quantity without materialising softmax in fp32.
The bonus enters the loss as `- entropy_coef * aggregate(entropy, mask, mode)`.
"""
from __future__ import annotations

import torch


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p_v log p_v over the last dim, computed in fp32 (or fp64 for fp64 input)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(x, dim=-1)
    return -(logp.exp() * logp).sum(-1)
