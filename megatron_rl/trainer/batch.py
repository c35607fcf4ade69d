"""Rollout samples -> the trainer's tensors, and the slicing of a batch into mini- and micro-batches.

Layout (what models/forward.py scores): one right-padded row per sample, prompt + response, [B, S];
position t of every per-token tensor refers to token x_t (log p(x_t | x_<t), the value of the
state before x_t, ...), so prompt and padding positions simply carry a 0 response mask.

Every rank holds the whole step's batch (rank 0 generates and scores it, then broadcasts the
samples): the advantages and the loss normalisers are then computed identically everywhere without
further communication, and each data-parallel rank trains on its own rows of each mini-batch.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..models.forward import select_rows
from ..rollout.types import Sample


def build_batch(samples: list[Sample], scores: list[float], *, pad_id: int = 0,
                step_ends: Optional[list[list[int]]] = None, step_scores: Optional[list[list[float]]] = None) -> dict:
    """The step's tensors from the samples (in group order) and their scalar scores. With step_ends
    and step_scores (process supervision) each step's reward sits on its last token, marked in
    `step_end_mask`, instead of the scalar score on the response's last token."""
    rows = [s.prompt_ids + s.response_ids for s in samples]
    batch, seq = len(rows), max(map(len, rows))
    input_ids = torch.full((batch, seq), pad_id, dtype=torch.long)
    response_mask = torch.zeros(batch, seq)
    rollout_logprobs = torch.zeros(batch, seq)
    token_rewards = torch.zeros(batch, seq)
    step_end_mask = torch.zeros(batch, seq)
    for r, (s, row) in enumerate(zip(samples, rows)):
        start, end = len(s.prompt_ids), len(row)
        input_ids[r, :end] = torch.tensor(row)
        response_mask[r, start:end] = 1.0
        if s.response_ids:
            rollout_logprobs[r, start:end] = torch.tensor(s.logprobs, dtype=torch.float32)
            if step_ends is None:
                token_rewards[r, end - 1] = scores[r]  # outcome reward on the last response token
            else:
                at = torch.tensor(step_ends[r], dtype=torch.long) + start
                token_rewards[r, at] = torch.tensor(step_scores[r], dtype=torch.float32)
                step_end_mask[r, at] = 1.0
    extra = {"step_end_mask": step_end_mask} if step_ends is not None else {}
    return {**extra,
        "input_ids": input_ids,
        "response_mask": response_mask,
        "rollout_logprobs": rollout_logprobs,
        "token_rewards": token_rewards,
        "scores": torch.tensor(scores, dtype=torch.float32),
        "lengths": torch.tensor([len(r) for r in rows]),
        "response_lengths": torch.tensor([len(s.response_ids) for s in samples]),
        "group_index": torch.tensor([s.prompt_index for s in samples]),
    }


def pad_rows(batch: dict, multiple: int) -> dict:
    """Append copies of row 0 with an all-zero response mask until the row count divides `multiple`.

    Used when dynamic sampling leaves a batch that does not split evenly over data-parallel ranks:
    a masked row adds nothing to a loss or a normaliser, it only keeps every rank's schedule equal.
    """
    size = batch["input_ids"].shape[0]
    extra = -size % multiple
    if extra == 0:
        return batch
    filler = select_rows(batch, torch.zeros(extra, dtype=torch.long))
    filler["response_mask"] = torch.zeros_like(filler["response_mask"])
    return {k: (torch.cat([v, filler[k]]) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == size else v)
            for k, v in batch.items()}


def mini_batches(batch: dict, rows_per_mini_batch: int, *, shuffle: bool, generator: torch.Generator) -> list[dict]:
    """Split a (padded) batch into mini-batches of whole rows, in a seeded random order when asked."""
    size = batch["input_ids"].shape[0]
    order = torch.randperm(size, generator=generator) if shuffle else torch.arange(size)
    return [select_rows(batch, order[i:i + rows_per_mini_batch]) for i in range(0, size, rows_per_mini_batch)]


def data_parallel_shard(batch: dict, dp_rank: int, dp_size: int) -> dict:
    """This data-parallel rank's contiguous share of the rows (the row count divides dp_size)."""
    size = batch["input_ids"].shape[0]
    assert size % dp_size == 0, (size, dp_size)
    per = size // dp_size
    return select_rows(batch, slice(dp_rank * per, (dp_rank + 1) * per))


def trim_columns(batch: dict) -> dict:
    """Drop trailing columns that are padding in every row (a mini-batch's rows may all be short)."""
    width = int(batch["lengths"].max())
    seq = batch["input_ids"].shape[1]
    if width == seq:
        return batch
    return {k: (v[:, :width] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == seq else v) for k, v in batch.items()}
