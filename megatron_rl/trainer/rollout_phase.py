"""Rank 0's part of a step: prompts -> samples -> scores, with DAPO's dynamic sampling and overlong
shaping. Nothing here is collective; the trainer broadcasts the result to the other ranks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import algorithms as A
from ..config.schema import AlgorithmConfig
from ..rollout.types import Sample, SamplingParams


@dataclass
class RolloutResult:
    samples: list[Sample]  # whole groups, adjacent, prompt_index renumbered 0..G-1
    scores: list[float]  # what the advantages see: rewards (+ overlong shaping)
    rewards: list[float]  # the reward functions' sums alone
    metrics: dict = field(default_factory=dict)


def score_samples(samples: list[Sample], items: list, runner, tokenizer) -> tuple[list[float], list[bool], dict]:
    """Reward each sample; `items[s.prompt_index]` is its prompt (data.PromptItem)."""
    from ..rewards import RewardInput

    inputs = [RewardInput(prompt=items[s.prompt_index].prompt_text,
                          response=tokenizer.decode(s.response_ids, skip_special_tokens=True),
                          answer=items[s.prompt_index].answer, finish_reason=s.finish_reason,
                          metadata=dict(items[s.prompt_index].metadata))
              for s in samples]
    result = runner.score(inputs)
    return list(result.scores), list(result.failed), dict(result.metrics)


def collect_rollouts(engine, draw_prompts: Callable[[int], list], params: SamplingParams, n: int, *,
                     num_prompts: int, runner, tokenizer, algo: AlgorithmConfig) -> RolloutResult:
    """Generate `num_prompts` groups of n samples and score them.

    With dynamic sampling (DAPO), groups whose scores (rewards + overlong shaping, what the
    advantages are computed from) all agree carry no gradient: they are dropped
    and more prompts are drawn, up to `max_rounds` extra rounds; the batch is then cut to
    `num_prompts` groups (or left short, reported in the metrics, when the rounds run out).
    """
    kept: list[tuple[list[Sample], list[float], list[float]]] = []
    dropped: list[tuple[list[Sample], list[float], list[float]]] = []
    metrics: dict = {}
    rounds = 1 + (algo.dynamic_sampling.max_rounds if algo.dynamic_sampling.enabled else 0)
    drawn = 0
    for _ in range(rounds):
        need = num_prompts - len(kept)
        items = draw_prompts(need)
        drawn += need
        batch = engine.generate([it.prompt_ids for it in items], params, n=n)
        rewards, _, reward_metrics = score_samples(batch.samples, items, runner, tokenizer)
        for k, v in reward_metrics.items():  # summed over rounds; means are recomputed below
            metrics[k] = metrics.get(k, 0.0) + v if k.endswith(("failed", "timeouts")) else v
        lengths = torch.tensor([len(s.response_ids) for s in batch.samples])
        shaped = torch.tensor(rewards, dtype=torch.float32)
        if algo.overlong.enabled:
            shaped = shaped + A.overlong_penalty(lengths, params.max_new_tokens, algo.overlong.buffer_len,
                                                 algo.overlong.penalty)
        group = torch.tensor([s.prompt_index for s in batch.samples])
        informative = A.informative_group_mask(shaped, group)  # what the advantages will see
        for g in range(len(items)):
            rows = (group == g).nonzero()[:, 0].tolist()
            entry = ([batch.samples[r] for r in rows], [shaped[r].item() for r in rows], [rewards[r] for r in rows])
            (dropped if algo.dynamic_sampling.enabled and not bool(informative[rows[0]]) else kept).append(entry)
        if len(kept) >= num_prompts:
            break
    # rounds exhausted: top up with uninformative groups (zero advantage, no gradient) so the
    # batch keeps its shape; counted, since it means the task is too easy or too hard right now
    filled = min(len(dropped), max(0, num_prompts - len(kept)))
    kept = kept[:num_prompts] + dropped[:filled]
    samples, scores, raw = [], [], []
    for g, (group_samples, group_scores, group_rewards) in enumerate(kept):
        for s in group_samples:
            s.prompt_index = g
        samples += group_samples
        scores += group_scores
        raw += group_rewards
    metrics.update({"rollout/prompts_drawn": float(drawn), "rollout/uninformative_filled": float(filled)})
    return RolloutResult(samples, scores, raw, metrics)
