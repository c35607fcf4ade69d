"""Forward passes through Megatron's pipeline schedules: scoring (no grad) and training steps.

Batches are right-padded token rows [B, S] (prompt + response; causal attention needs no mask for
right padding). Every function here is collective over the model-parallel group and returns the
same result on every pipeline stage.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist


def select_rows(batch: dict, rows) -> dict:
    """The given rows (index tensor or slice) of every [B, ...] tensor in `batch`; other values shared."""
    size = batch["input_ids"].shape[0]
    return {k: (v[rows] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == size else v) for k, v in batch.items()}


def split_micro_batches(batch: dict, micro_batch_size: int) -> list[dict]:
    """Rows of every [B, ...] tensor in `batch` cut into micro-batches (other values shared)."""
    rows = batch["input_ids"].shape[0]
    return [select_rows(batch, slice(start, start + micro_batch_size)) for start in range(0, rows, micro_batch_size)]


def _broadcast_from_last_stage(obj):
    from megatron.core import parallel_state as ps

    if ps.get_pipeline_model_parallel_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=ps.get_pipeline_model_parallel_last_rank(),
                               group=ps.get_pipeline_model_parallel_group())
    return box[0]


def run_pipeline(chunks, micro_batches: list[dict], output_fn: Callable, *, forward_only: bool) -> list:
    """One pass of the pipeline schedule over `micro_batches`.

    `output_fn(output, micro_batch) -> (loss, metrics)` runs on the last stage: `output` is the
    model output for the micro-batch ([b, s, V/tp] logits or [b, s, 1] values). Returns the list
    of `metrics` (one per micro-batch), on every pipeline stage.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        ids = mb["input_ids"]
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        output = model(ids, positions, None)
        return output, lambda out: output_fn(out, mb)

    seq_len = max(mb["input_ids"].shape[1] for mb in micro_batches)
    mbs = max(mb["input_ids"].shape[0] for mb in micro_batches)
    iterators = [iter(micro_batches) for _ in chunks] if len(chunks) > 1 else iter(micro_batches)
    results = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iterators, model=list(chunks),
        num_microbatches=len(micro_batches), seq_length=seq_len, micro_batch_size=mbs,
        forward_only=forward_only,
    )
    return _broadcast_from_last_stage(results)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, *, vocab_size: int, temperature: float = 1.0,
                   with_entropy: bool = False, backend: str = "auto"):
    """log p(x_t | x_<t) at every position t >= 1 of `input_ids` (position 0 gets 0), from
    vocab-parallel logits [b, s, V/tp]; entropy of the next-token distribution likewise aligned."""
    from megatron.core import parallel_state as ps

    from .. import kernels

    tp_group = ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None
    # vocab_size: the kernels mask the padded vocab columns (the last TP rank's tail)
    lp, ent = kernels.logprobs_and_entropy(logits[:, :-1], input_ids[:, 1:], tp_group=tp_group,
                                           temperature=temperature, vocab_size=vocab_size, backend=backend)
    pad = lp.new_zeros(lp.shape[0], 1)
    lp = torch.cat([pad, lp], 1)
    ent = torch.cat([pad, ent], 1)
    return (lp, ent) if with_entropy else lp


@torch.no_grad()
def score(chunks, batch: dict, *, micro_batch_size: int, kind: str, vocab_size: Optional[int] = None,
          temperature: float = 1.0, with_entropy: bool = False, backend: str = "auto") -> dict:
    """Forward-only scoring of `batch["input_ids"]` [B, S].

    kind "logprobs" (actor / reference): {"logprobs": [B, S], "entropy": [B, S] if asked}
    kind "values" (critic): {"values": [B, S]}; kind "reward": {"rewards": [B]} read at the last
    non-pad token (`batch["lengths"]` [B] gives each row's length).
    """
    for c in chunks:
        c.eval()
    micro = split_micro_batches(batch, micro_batch_size)

    def output_fn(out, mb):
        if kind == "logprobs":
            res = token_logprobs(out, mb["input_ids"], vocab_size=vocab_size, temperature=temperature,
                                 with_entropy=with_entropy, backend=backend)
            res = {"logprobs": res[0], "entropy": res[1]} if with_entropy else {"logprobs": res}
        elif kind == "values":
            res = {"values": out[..., 0].float()}
        elif kind == "reward":
            last = (mb["lengths"] - 1).clamp(min=0)
            res = {"rewards": out[..., 0].float().gather(1, last[:, None])[:, 0]}
        else:
            raise ValueError(f"unknown score kind {kind!r}")
        return torch.zeros((), device=out.device), res

    results = run_pipeline(chunks, micro, output_fn, forward_only=True)
    return {k: torch.cat([r[k] for r in results], 0) for k in results[0]}
