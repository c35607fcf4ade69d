"""What every run (`train`, `sft`, `rm`) sets up the same way: the tokenizer and, for the SFT and
reward-model stages, the output directory and the progress tracker on rank 0."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def run_tokenizer(cfg):
    """(tokenizer, pad id) of the run: data.tokenizer, else the model's checkpoint. load_tokenizer
    makes EOS the pad when there is none."""
    from ..data import load_tokenizer

    tokenizer = load_tokenizer(cfg.data.tokenizer or cfg.model.hf_path)
    return tokenizer, tokenizer.pad_token_id


def stage_tracker(cfg, out_dir: str, *, steps: int, log_every: int, stage: str, rank0: bool) -> Optional[object]:
    """Rank 0: make `out_dir` and a Tracker for a `stage` (sft, rm) of `steps` steps; None elsewhere."""
    if not rank0:
        return None
    from .tracking import Tracker

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Tracker(cfg.logging.model_copy(update={"log_every": log_every}), str(out_dir), total_steps=steps,
                   run_name=f"{cfg.run.name}-{stage}", desc=stage)
