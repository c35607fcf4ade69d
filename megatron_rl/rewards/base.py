"""The reward protocol: what a reward source receives, what it returns, what the runner hands back.

A reward source is any callable `(inp: RewardInput) -> float` (bool and int are accepted and turned
into floats). Sources are plain, picklable objects: the runner sends them to its worker processes.
Each built-in source class also has `from_source(source, key)`, which builds it from a
`config.schema.RewardSource` and raises `ConfigError` naming `key` (e.g. `reward.sources[1]`) for a
bad setting. A source may define `warmup()`: the runner calls it once when a worker starts (the math
source imports math-verify there, outside the timed calls).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, runtime_checkable


@dataclass
class RewardInput:
    """One sample to score: the prompt as the model saw it, the decoded response, the gold answer."""

    prompt: str
    response: str
    answer: Optional[str] = None
    finish_reason: str = "stop"  # stop | length | abort (the rollout engine's finish reason)
    metadata: dict[str, Any] = field(default_factory=dict)  # the dataset row's extra fields
    # process supervision (algorithm.advantage grpo_process): the response cut into its steps
    # (algorithm.process.step_separator kept at the end of each step but the last); empty otherwise
    steps: tuple[str, ...] = ()


@runtime_checkable
class RewardFunction(Protocol):
    """A reward source: one sample in, one score out. Raise to mark the sample failed."""

    def __call__(self, inp: RewardInput) -> float: ...


@dataclass
class RewardResult:
    """What `RewardRunner.score` returns, one entry per input in input order.

    scores: sum over sources of weight * source score (a failed source contributes 0).
    failed: a source raised, timed out or its worker died for that input.
    errors: the first error of that input, one line (None when it did not fail).
    source_scores: per source name (see `RewardRunner.names`), the unweighted scores (0 when failed).
    metrics: reward/mean, reward/failed (count of failed inputs), reward/timeouts (count of timed-out
        calls), reward/errors (count of calls that raised), reward/<name>_mean (unweighted mean over
        all inputs, failed ones as 0), reward/<name>_failed, reward/worker_restarts, reward/time_s.
    """

    scores: list[float]
    failed: list[bool]
    errors: list[Optional[str]]
    source_scores: dict[str, list[float]]
    metrics: dict[str, float]
    # with per-step sources: per input, one reward per step (the weighted per-step scores, plus the
    # other sources' weighted sum on the last step); None without them
    step_scores: Optional[list[list[float]]] = None


def as_score(value: Any, what: str) -> float:
    """A source's return value as a finite float; anything else raises (the sample is failed)."""
    if isinstance(value, bool):
        return float(value)
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} returned {type(value).__name__} {value!r:.60}, expected a float or bool") from None
    if not math.isfinite(out):
        raise ValueError(f"{what} returned {out}, expected a finite number")
    return out


def as_step_scores(value: Any, n_steps: int, what: str) -> list[float]:
    """A per-step source's return value: one finite float per step of the response, else raises."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{what} returned {type(value).__name__} {value!r:.60}, expected a list of {n_steps} "
                        "step scores (per_step source)")
    if len(value) != n_steps:
        raise ValueError(f"{what} returned {len(value)} step scores for a response of {n_steps} steps")
    return [as_score(v, what) for v in value]
