"""Rank 0's part of a step: prompts -> samples -> scores, with DAPO's dynamic sampling and overlong
shaping. Nothing here is collective; the trainer broadcasts the result to the other ranks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

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
    # process supervision: per sample, the response index of each step's last token and that step's
    # reward (+ the overlong shaping on the last step); None otherwise
    step_ends: Optional[list[list[int]]] = None
    step_scores: Optional[list[list[float]]] = None


def split_steps(response_ids: list[int], tokenizer, separator: str) -> tuple[list[str], list[int]]:
    """The response's steps (texts, each ending with `separator` but the last) and the index of the
    token that ends each: the token that completes a separator (a token holding a separator and more
    text ends the step inside it). Decoded token by token, so the boundaries are the engine's tokens,
    never a re-tokenisation."""
    pieces = [tokenizer.decode([t], skip_special_tokens=True) for t in response_ids]
    texts, ends, current = [], [], ""
    for i, piece in enumerate(pieces):
        current += piece
        if separator in current:
            texts.append(current)
            ends.append(i)
            current = ""
    if current or not ends:  # text after the last separator, or no separator at all
        if response_ids:
            texts.append(current)
            ends.append(len(response_ids) - 1)
    return texts, ends


@dataclass
class ScoredSamples:
    scores: list[float]  # the reward sources' weighted sum per sample
    failed: list[bool]
    metrics: dict
    step_ends: Optional[list[list[int]]] = None  # process supervision: see RolloutResult
    step_scores: Optional[list[list[float]]] = None


def score_samples(samples: list[Sample], items: list, runner, tokenizer,
                  step_separator: Optional[str] = None) -> ScoredSamples:
    """Reward each sample; `items[s.prompt_index]` is its prompt (data.PromptItem). With a
    `step_separator` (process supervision) the responses are cut into steps for the per-step
    sources, and their step ends and step scores come back too."""
    from ..rewards import RewardInput

    steps = [split_steps(s.response_ids, tokenizer, step_separator) if step_separator else ((), None) for s in samples]
    inputs = [RewardInput(prompt=items[s.prompt_index].prompt_text,
                          response=tokenizer.decode(s.response_ids, skip_special_tokens=True),
                          answer=items[s.prompt_index].answer, finish_reason=s.finish_reason,
                          metadata=dict(items[s.prompt_index].metadata), steps=tuple(texts))
              for s, (texts, _) in zip(samples, steps)]
    result = runner.score(inputs)
    step_ends = [ends for _, ends in steps] if step_separator else None
    return ScoredSamples(list(result.scores), list(result.failed), dict(result.metrics), step_ends, result.step_scores)


def collect_rollouts(engine, draw_prompts: Callable[[int], list], params: SamplingParams, n: int, *,
                     num_prompts: int, runner, tokenizer, algo: AlgorithmConfig) -> RolloutResult:
    """Generate `num_prompts` groups of n samples and score them.

    With dynamic sampling (DAPO), groups whose scores (rewards + overlong shaping, what the
    advantages are computed from) all agree carry no gradient: they are dropped
    and more prompts are drawn, up to `max_rounds` extra rounds; the batch is then cut to
    `num_prompts` groups (or left short, reported in the metrics, when the rounds run out).
    """
    kept: list[tuple] = []  # per group: (samples, shaped scores, rewards, step ends, step scores)
    dropped: list[tuple] = []
    metrics: dict = {}
    separator = algo.process.step_separator if algo.advantage == "grpo_process" else None
    rounds = 1 + (algo.dynamic_sampling.max_rounds if algo.dynamic_sampling.enabled else 0)
    drawn = 0
    for _ in range(rounds):
        need = num_prompts - len(kept)
        items = draw_prompts(need)
        drawn += need
        batch = engine.generate([it.prompt_ids for it in items], params, n=n)
        scored = score_samples(batch.samples, items, runner, tokenizer, separator)
        rewards, reward_metrics, step_ends, step_scores = scored.scores, scored.metrics, scored.step_ends, scored.step_scores
        for k, v in reward_metrics.items():  # summed over rounds; means are recomputed below
            metrics[k] = metrics.get(k, 0.0) + v if k.endswith(("failed", "timeouts")) else v
        lengths = torch.tensor([len(s.response_ids) for s in batch.samples])
        shaped = torch.tensor(rewards, dtype=torch.float32)
        if algo.overlong.enabled:
            penalty = A.overlong_penalty(lengths, params.max_new_tokens, algo.overlong.buffer_len, algo.overlong.penalty)
            shaped = shaped + penalty
            if step_scores is not None:  # the shaping joins the last step's reward
                step_scores = [sc[:-1] + [sc[-1] + p] if sc else sc for sc, p in zip(step_scores, penalty.tolist())]
        group = torch.tensor([s.prompt_index for s in batch.samples])
        informative = A.informative_group_mask(shaped, group)  # what the advantages will see
        for g in range(len(items)):
            rows = (group == g).nonzero()[:, 0].tolist()
            entry = ([batch.samples[r] for r in rows], [shaped[r].item() for r in rows], [rewards[r] for r in rows],
                     [step_ends[r] for r in rows] if step_ends is not None else None,
                     [step_scores[r] for r in rows] if step_scores is not None else None)
            (dropped if algo.dynamic_sampling.enabled and not bool(informative[rows[0]]) else kept).append(entry)
        if len(kept) >= num_prompts:
            break
    # rounds exhausted: top up with uninformative groups (zero advantage, no gradient) so the
    # batch keeps its shape; counted, since it means the task is too easy or too hard right now
    filled = min(len(dropped), max(0, num_prompts - len(kept)))
    kept = kept[:num_prompts] + dropped[:filled]
    samples, scores, raw, ends, step_rewards = [], [], [], [], []
    for g, (group_samples, group_scores, group_rewards, group_ends, group_steps) in enumerate(kept):
        for s in group_samples:
            s.prompt_index = g
        samples += group_samples
        scores += group_scores
        raw += group_rewards
        ends += group_ends or []
        step_rewards += group_steps or []
    metrics.update({"rollout/prompts_drawn": float(drawn), "rollout/uninformative_filled": float(filled)})
    if separator is None:
        return RolloutResult(samples, scores, raw, metrics)
    metrics["rollout/steps_per_response"] = sum(map(len, ends)) / max(len(ends), 1)
    return RolloutResult(samples, scores, raw, metrics, step_ends=ends, step_scores=step_rewards)
