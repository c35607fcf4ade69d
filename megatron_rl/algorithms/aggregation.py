"""Reducing a per-token loss to a scalar.

Modes (verl's names and values, so numbers can be compared):
  token-mean               sum(x * m) / #tokens                      (DAPO; verl default)
  seq-mean-token-sum       mean over sequences of the per-sequence token sum
  seq-mean-token-mean      mean over sequences of the per-sequence token mean  (GRPO paper)
  seq-mean-token-sum-norm  sum(x * m) / (L * #sequences), L a constant length budget (Dr.GRPO:
                           1/G sum_i 1/L sum_t, so the 1/G over responses stays); verl uses the
                           padded response length as L, and so do we when no normalizer is given.

Split invariance: every mode is `numerator / normalizer` where the numerator is additive over
sequences. Computing each micro-batch (or data-parallel shard) with the *global* normalizer and
summing the pieces gives exactly the whole-batch value. `global_normalizer` computes that
denominator from the pieces one rank holds; the trainer sums it across data-parallel ranks for
the token and sequence modes (the -norm mode's constant is not summed).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from .masked import as_float, masked_sum

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _check(mode: str) -> None:
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {', '.join(LOSS_AGG_MODES)}")


def aggregate(per_token: torch.Tensor, response_mask: torch.Tensor, mode: str = "token-mean",
              normalizer: Optional[float | torch.Tensor] = None) -> torch.Tensor:
    """Aggregate a [B, L] per-token quantity to a scalar; `normalizer` overrides the denominator."""
    _check(mode)
    per_token = as_float(per_token)
    mask = response_mask.to(per_token.dtype)
    token_sum = masked_sum(per_token, mask, dim=-1)  # [B]
    if mode == "seq-mean-token-mean":
        token_sum = token_sum / mask.sum(-1).clamp(min=1)
    numerator = token_sum.sum()
    if normalizer is None:
        normalizer = local_normalizer(response_mask, mode)
    if torch.is_tensor(normalizer):
        normalizer = normalizer.to(numerator.dtype)
    return numerator / normalizer


def _count(response_mask: torch.Tensor, mode: str) -> torch.Tensor:
    valid = response_mask != 0  # count on booleans: a bf16/fp16 sum of ones rounds or overflows
    if mode == "token-mean":
        count = valid.sum()
    else:
        count = valid.any(-1).sum()  # sequences with at least one valid token
    return as_float(count)


def local_normalizer(response_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The denominator `aggregate` uses for this batch alone (never 0)."""
    _check(mode)
    count = _count(response_mask, mode)
    if mode == "seq-mean-token-sum-norm":
        count = count * response_mask.shape[-1]
    return count.clamp(min=1)


def global_normalizer(masks: Iterable[torch.Tensor], mode: str, norm_len: Optional[int] = None) -> torch.Tensor:
    """Denominator for a batch held as several pieces (micro-batches), for split-invariant losses.

    For seq-mean-token-sum-norm the denominator is the constant `norm_len` (the configured generation
    budget, as Dr.GRPO prescribes; required, since each rank's padding differs) times the number of
    sequences.
    """
    _check(mode)
    count = sum(_count(m, mode) for m in masks)
    if mode == "seq-mean-token-sum-norm":
        if norm_len is None:
            raise ValueError("seq-mean-token-sum-norm needs norm_len (the generation budget) for a global normalizer")
        count = count * float(norm_len)
    return torch.as_tensor(count, dtype=torch.float32).clamp(min=1)
