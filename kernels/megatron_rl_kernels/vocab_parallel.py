"""Megatron's vocab-parallel layout and the merge of per-rank softmax statistics (pure torch).

Each tensor-parallel rank holds a contiguous slice [rank * V_local, (rank + 1) * V_local) of the
(padded) vocabulary; labels are global ids. `vocab_size`, when given, is the real vocabulary: the
columns at or beyond it (Megatron pads the embedding to a multiple of 128 * TP) are left out of the
softmax and get zero gradient. Without it every column counts, as in Megatron's own cross entropy.
"""
from __future__ import annotations

from typing import Optional

import torch


def tp_rank_and_size(tp_group) -> tuple[int, int]:
    if tp_group is None:
        return 0, 1
    import torch.distributed as dist
    return dist.get_rank(tp_group), dist.get_world_size(tp_group)


def local_vocab(n_local: int, tp_group, vocab_size: Optional[int]) -> tuple[int, int, int]:
    """(global id of local column 0, number of real local columns, tp world size)."""
    rank, world = tp_rank_and_size(tp_group)
    start = rank * n_local
    n_valid = n_local if vocab_size is None else max(0, min(n_local, int(vocab_size) - start))
    return start, n_valid, world


def max_over_ranks(row_max: torch.Tensor, n_local: int, tp_group) -> torch.Tensor:
    """All-reduce MAX of the rows' maxima, which also checks that every rank holds the same number of
    vocabulary columns: the label offsets (rank * V_local) are only right for equal shards, and unequal
    ones would give silently wrong log-probabilities. The sizes ride in the same collective."""
    import torch.distributed as dist
    sizes = torch.tensor([n_local, -n_local], dtype=row_max.dtype, device=row_max.device)
    packed = torch.cat([row_max.reshape(-1), sizes])
    dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=tp_group)
    largest, smallest = int(packed[-2]), -int(packed[-1])
    if largest != smallest:
        raise ValueError(f"tensor-parallel vocabulary shards differ in size ({largest} vs {smallest} columns; this "
                         f"rank has {n_local}): each rank must hold an equal contiguous slice of the vocabulary, "
                         "as Megatron's does (pad the vocabulary to a multiple of the tensor-parallel size)")
    return packed[:-2].reshape(row_max.shape)


def merge_stats_across_ranks(stats: torch.Tensor, labels: torch.Tensor, ignore_index: int, tp_group, n_local: int):
    """Per-rank raw stats [4, rows] = (m, s, a, x_label) over the local slice, with
    s = sum exp(x - m) and a = sum exp(x - m) (x - m), -> (logprob, entropy, max, log_sum) over the
    whole vocabulary. Two collectives: MAX of m (with the shard-size check), then one SUM of (s, a,
    x_label) rescaled to the global max (x_label is 0 on the ranks that do not own the label).
    n_local: this rank's number of vocabulary columns (padding included)."""
    import torch.distributed as dist
    distributed = tp_group is not None and dist.get_world_size(tp_group) > 1
    m_local, s, a, x_label = stats
    m = max_over_ranks(m_local, n_local, tp_group) if distributed else m_local.clone()
    m_ref = torch.where(m == float("-inf"), 0.0, m)  # rows of -inf only stay NaN-free
    rescale = torch.exp(m_local - m_ref)  # 0 on a rank whose slice is all -inf (or empty)
    # sum e'(x - M) = rescale * (a + s (m_local - M)); s == 0 where m_local is -inf
    shift = s * torch.where(s > 0, m_local - m_ref, 0.0)
    packed = torch.stack([rescale * s, rescale * (a + shift), x_label])
    if distributed:
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=tp_group)
    s, a, x_label = packed
    log_s = torch.log(s)
    logprob = torch.where(labels != ignore_index, (x_label - m) - log_s, 0.0)
    return logprob, log_s - a / s, m, log_s


def check_inputs(leading_shape: torch.Size, labels: torch.Tensor, temperature: float) -> None:
    """labels must have the logits' (or hidden states') leading shape, integer ids; T > 0."""
    if labels.shape != leading_shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the logits' leading shape {tuple(leading_shape)} "
                         "(logits [..., V_local], labels [...])")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be int64 (or int32), got {labels.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
