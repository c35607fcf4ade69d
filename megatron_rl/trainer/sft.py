"""Supervised fine-tuning: `megatron-rl sft CONFIG` (torchrun or one process).

Rows of prompt (templated like RL prompts) + response + EOS; the loss is the token-mean
cross-entropy of the response tokens over the whole global batch, computed by the logprob kernels
on the vocab-parallel logits. The result is exported as an HF checkpoint (with the tokenizer) in
`sft.output_dir/hf`, which an RL run then loads with `model.hf_path`. (SFT runs are short warm
starts here; they are not checkpointed for resumption.)
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from ..config.schema import RunConfig
from .batch import data_parallel_shard, pad_rows, trim_columns


def sft_rows(items, tokenizer, response_key: str, where: str) -> list[tuple[list[int], int]]:
    """(prompt ids + response ids + EOS, prompt length) per item."""
    from ..data import DataError

    rows = []
    for it in items:
        if response_key not in it.metadata:
            raise DataError(f"{where}: row {it.index + 1} has no '{response_key}' field (sft.response_key); "
                            f"it has {', '.join(sorted(it.metadata)) or 'no other fields'}")
        response = tokenizer(str(it.metadata[response_key]), add_special_tokens=False)["input_ids"]
        rows.append((it.prompt_ids + response + [tokenizer.eos_token_id], len(it.prompt_ids)))
    return rows


def sft_batch(rows: list[tuple[list[int], int]], pad_id: int) -> dict:
    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width)
    for i, (row, prompt_len) in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, prompt_len:len(row)] = 1.0
    return {"input_ids": ids, "response_mask": mask, "lengths": torch.tensor([len(r) for r, _ in rows])}


def run_sft(cfg: RunConfig) -> dict:
    from megatron.core import parallel_state as ps

    from .. import kernels
    from ..data import DataError, PromptDataset, PromptSampler
    from ..data.prompts import export_tokenizer
    from ..models.forward import split_micro_batches
    from ..models.hf_io import save_hf
    from ..models.role import MegatronRole
    from ..parallel import init_parallel
    from .setup import run_tokenizer, stage_tracker

    s = cfg.sft
    if not s.train_path:
        raise DataError("sft.train_path is not set: point it at a JSONL or Parquet file of prompt/response rows")
    init_parallel(cfg.parallel, seed=cfg.run.seed)
    rank0, dp, dp_rank = dist.get_rank() == 0, ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    tokenizer, pad_id = run_tokenizer(cfg)
    data_cfg = cfg.data.model_copy(update={"train_path": s.train_path})
    dataset = PromptDataset.from_config(data_cfg, tokenizer, split="train")
    sampler = PromptSampler(len(dataset), shuffle=True, seed=cfg.run.seed)  # the same order on every rank
    actor = MegatronRole.build("actor", cfg.model, cfg.parallel, s.optim, total_steps=s.steps,
                               hf_path=cfg.model.hf_path, recompute=cfg.actor.recompute)
    tp_group = ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None
    out_dir = Path(s.output_dir)
    tracker = stage_tracker(cfg, s.output_dir, steps=s.steps, log_every=s.log_every, stage="sft", rank0=rank0)

    for step in range(1, s.steps + 1):
        rows = sft_rows([dataset[i] for i in sampler.next_indices(s.batch_size)], tokenizer, s.response_key,
                        s.train_path)
        batch = trim_columns(pad_rows(sft_batch(rows, pad_id), dp * s.micro_batch_size))
        tokens = batch["response_mask"][:, 1:].sum().clamp(min=1)  # the global normaliser

        def loss_fn(logits, mb):
            lp, _ = kernels.logprobs_and_entropy(logits[:, :-1], mb["input_ids"][:, 1:], tp_group=tp_group,
                                                 vocab_size=cfg.model.vocab_size, backend=cfg.model.kernels)
            mask = mb["response_mask"][:, 1:]
            nll = -(lp.float() * mask).sum()
            return nll / tokens, {}

        micro = split_micro_batches(data_parallel_shard(batch, dp_rank, dp), s.micro_batch_size)
        out = actor.train_step(micro, loss_fn)
        if rank0:
            tracker.log(step, {"sft/loss": out["loss"], "sft/perplexity": float(torch.tensor(out["loss"]).exp()),
                               "actor/grad_norm": out["grad_norm"], "actor/lr": out["lr"],
                               "sft/response_tokens": float(tokens)})
    hf_dir = out_dir / "hf"
    save_hf(actor.chunks, str(hf_dir), cfg.model)
    if rank0:
        export_tokenizer(tokenizer, cfg.data.tokenizer or cfg.model.hf_path, hf_dir)
        tracker.write(f"sft: exported {hf_dir} (load it with model.hf_path={hf_dir})")
        tracker.close()
    dist.barrier()
    return {"hf_dir": str(hf_dir), "final_loss": out["loss"]}
