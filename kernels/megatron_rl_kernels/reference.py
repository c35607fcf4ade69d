"""Eager torch references for the fused kernels: same signatures, same vocab-parallel semantics.

They materialise the fp32 (fp64 for fp64 input) logits and let autograd do the backward; they are
the fallback where Triton cannot run and the yardstick in tests and benchmarks. Vocab-parallel
logits are merged like the kernels do: MAX all-reduce of the row max (no gradient: the result does
not depend on it), then one SUM all-reduce of (sum exp, sum exp * (x - max), label logit) whose
backward passes the gradient through unchanged, because every rank holds the same merged value
and computes the same loss from it (Megatron's reduce-from-tensor-parallel-region).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .vocab_parallel import check_inputs, local_vocab, max_over_ranks
from .policy_loss import policy_loss_from_logprobs


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) forward; identity backward (each rank's loss already sees the full sum)."""

    @staticmethod
    def forward(ctx, x, group):
        import torch.distributed as dist
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, *, tp_group=None, temperature: float = 1.0,
                         ignore_index: int = -100, vocab_size: Optional[int] = None):
    """Eager reference of megatron_rl.kernels.logprobs_and_entropy."""
    check_inputs(logits.shape[:-1], labels, temperature)
    start, n_valid, world = local_vocab(logits.shape[-1], tp_group, vocab_size)
    x = logits if logits.dtype == torch.float64 else logits.float()
    x = x[..., :n_valid] / temperature  # Megatron's padded vocab rows (>= vocab_size) are left out

    row_max = x.detach().amax(-1) if n_valid else x.new_full(labels.shape, float("-inf"))
    if world > 1:
        row_max = max_over_ranks(row_max, logits.shape[-1], tp_group)
    row_max = torch.where(row_max == float("-inf"), 0.0, row_max)  # rows of -inf only stay NaN-free
    shifted = x - row_max[..., None]
    e = torch.exp(shifted)
    sum_exp = e.sum(-1)
    # entropy as log s - sum e (x - m) / s: the lse - E[x] form cancels catastrophically on peaked rows
    sum_e_shifted = (e * shifted).sum(-1)

    label_col = labels.long() - start
    owned = (labels != ignore_index) & (label_col >= 0) & (label_col < n_valid)
    if n_valid:
        picked = shifted.gather(-1, label_col.clamp(0, n_valid - 1)[..., None]).squeeze(-1)
        label_shifted = torch.where(owned, picked, 0.0)
    else:
        label_shifted = sum_exp * 0  # this rank owns no label
    stats = torch.stack([sum_exp, sum_e_shifted, label_shifted])
    if world > 1:
        stats = _SumOverRanks.apply(stats, tp_group)
    sum_exp, sum_e_shifted, label_shifted = stats
    log_sum = torch.log(sum_exp)
    logprob = torch.where(labels != ignore_index, label_shifted - log_sum, 0.0)
    entropy = log_sum - sum_e_shifted / sum_exp
    if logits.dtype != torch.float64:
        logprob, entropy = logprob.float(), entropy.float()
    return logprob, entropy


def linear_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, tp_group=None,
                                temperature: float = 1.0, ignore_index: int = -100,
                                vocab_size: Optional[int] = None, chunk_size: Optional[int] = None):
    """Eager reference of megatron_rl.kernels.linear_logprobs_and_entropy: the full logits
    F.linear(hidden, weight) are materialised (chunk_size is accepted and ignored). The gradient of
    `hidden` is this rank's partial sum, as with a ColumnParallelLinear output layer."""
    return logprobs_and_entropy(F.linear(hidden, weight), labels, tp_group=tp_group, temperature=temperature,
                                ignore_index=ignore_index, vocab_size=vocab_size)


def clipped_policy_loss(logits: torch.Tensor, labels: torch.Tensor, **kwargs):
    """Eager reference of megatron_rl.kernels.clipped_policy_loss (same keyword arguments)."""
    return policy_loss_from_logprobs(logprobs_and_entropy, logits, labels, **kwargs)
