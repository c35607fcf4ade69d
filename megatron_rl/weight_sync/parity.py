"""Did the weights arrive? The engine's logprobs of its own samples against the trainer's scoring.

`rollout_train_gap` is the per-step metric (the train/inference mismatch the correction in
algorithms/mismatch.py acts on); `check_parity` is the optional post-sync check
(`rollout.check_parity`), which fails loudly when a sync went wrong (a missed tensor, a wrong
reshard) instead of letting the run train on silently mismatched logprobs.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..rollout.types import SamplingParams


class WeightSyncError(RuntimeError):
    pass


def right_padded_rows(samples, pad_id: int = 0) -> torch.Tensor:
    """prompt + response of each sample as right-padded rows [B, S] (the trainer's layout)."""
    rows = [s.prompt_ids + s.response_ids for s in samples]
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row)
    return ids


def rollout_train_gap(samples, train_logprobs: torch.Tensor) -> dict:
    """|engine logprob - trainer logprob| over every response token; train_logprobs [B, S] aligned
    with `right_padded_rows(samples)` (position t holds log p(x_t | x_<t))."""
    diffs = [
        train_logprobs[r, len(s.prompt_ids):len(s.prompt_ids) + len(s.response_ids)].float()
        - torch.tensor(s.logprobs, dtype=torch.float32)
        for r, s in enumerate(samples) if s.response_ids
    ]
    gap = torch.cat(diffs).abs() if diffs else torch.zeros(1)
    return {"rollout_train_logprob_gap_mean": gap.mean().item(), "rollout_train_logprob_gap_max": gap.max().item()}


def check_parity(actor, engine, probe_prompts: list[list[int]], *, max_new_tokens: int = 8, tol: float = 1e-3,
                 micro_batch_size: int = 4) -> dict:
    """Collective: rank 0's engine samples the probes (temperature 1), every rank scores them with the
    actor, and a gap above `tol` raises WeightSyncError on every rank."""
    box = [None]
    if dist.get_rank() == 0:
        params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
        box[0] = engine.generate(probe_prompts, params).samples
    dist.broadcast_object_list(box, src=0)
    samples = box[0]
    scored = actor.score({"input_ids": right_padded_rows(samples)}, micro_batch_size=micro_batch_size)["logprobs"]
    gap = rollout_train_gap(samples, scored)
    if gap["rollout_train_logprob_gap_max"] > tol:
        raise WeightSyncError(
            f"after the weight sync the engine's logprobs differ from the trainer's by up to "
            f"{gap['rollout_train_logprob_gap_max']:.2e} (> {tol:g}): the engine did not receive the trained weights"
        )
    return gap
