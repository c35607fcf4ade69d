"""Evaluation on the held-out prompts, with the training rewards (rank 0; not collective).

A sample counts as correct when it earns full marks: a reward of at least the sum of the positive
source weights (1 for the plain math reward). Accuracy is the greedy pass@1; pass@k samples k
responses per prompt with the training sampling parameters and counts a prompt as solved when any
of them is correct.
"""
from __future__ import annotations

from typing import Optional

from ..rollout.types import SamplingParams
from .rollout_phase import score_samples


def evaluate(engine, dataset, runner, tokenizer, *, greedy: SamplingParams, sampling: SamplingParams,
             full_marks: float = 1.0, pass_k: Optional[int] = None, max_prompts: Optional[int] = None,
             step_separator: Optional[str] = None) -> dict:
    items = [dataset[i] for i in range(min(len(dataset), max_prompts or len(dataset)))]
    prompts = [it.prompt_ids for it in items]
    batch = engine.generate(prompts, greedy, n=1)
    scored = score_samples(batch.samples, items, runner, tokenizer, step_separator)  # steps for per-step sources
    rewards, failed = scored.scores, scored.failed
    correct = [r >= full_marks - 1e-6 for r in rewards]
    metrics = {
        "eval/accuracy": sum(correct) / len(correct),
        "eval/reward_mean": sum(rewards) / len(rewards),
        "eval/response_length": sum(len(s.response_ids) for s in batch.samples) / len(batch.samples),
        "eval/reward_failed": float(sum(failed)),
        "eval/prompts": float(len(items)),
    }
    if pass_k:
        batch = engine.generate(prompts, sampling, n=pass_k)
        rewards = score_samples(batch.samples, items, runner, tokenizer, step_separator).scores
        solved = {}
        for s, r in zip(batch.samples, rewards):
            solved[s.prompt_index] = solved.get(s.prompt_index, False) or r >= full_marks - 1e-6
        metrics[f"eval/pass@{pass_k}"] = sum(solved.values()) / len(items)
    return metrics
