"""Rewards: the protocol, the rule-based and user-function sources, the process-pool runner.

    runner = build_reward_runner(cfg.reward)      # ConfigError (one line) for a bad source
    result = runner.score([RewardInput(prompt, response, answer, finish_reason, metadata), ...])
    result.scores, result.failed, result.metrics
    runner.close()

`REWARD_SOURCES` maps `reward.sources[i].type` to the source class; each class builds itself with
`from_source(source, key)`. Types of the schema missing from it (NOT_SUPPORTED) are not built yet
and fail at build time. `reward_model` is registered as ScoredByTrainer: the trainer builds and
scores it on its own ranks (megatron_rl/trainer/reward_model/, docs/reward_model.md), so the runner
leaves it out. See docs/rewards.md.

Imports stay light: math-verify is imported by the math source on its first use (in the workers).
"""
from __future__ import annotations

from typing import Any

from .base import RewardFunction, RewardInput, RewardResult
from .code_exec import CodeReward
from .format import FormatReward
from .language import LanguageReward
from .math import MathReward
from .python_fn import PythonFunctionReward
from .remote import RemoteReward
from .runner import NoWorkerRewards, RewardRunner


class ScoredByTrainer:
    """A source type the reward runner leaves out: a sharded model the trainer scores on its own
    ranks (`reward_model`: megatron_rl.trainer.reward_model.RewardModelScorer)."""

REWARD_SOURCES: dict[str, Any] = {
    "math": MathReward,
    "format": FormatReward,
    "language": LanguageReward,
    "python": PythonFunctionReward,
    "remote": RemoteReward,  # batched: one POST per chunk of batch_size samples
    "code": CodeReward,  # runs the response's program in a sandboxed subprocess
    "reward_model": ScoredByTrainer,  # scored on the trainer's ranks, not in the workers
}

# in the schema, not built yet (a later issue)
NOT_SUPPORTED: tuple[str, ...] = ()

__all__ = [
    "REWARD_SOURCES",
    "CodeReward",
    "FormatReward",
    "LanguageReward",
    "MathReward",
    "PythonFunctionReward",
    "RemoteReward",
    "RewardFunction",
    "RewardInput",
    "RewardResult",
    "RewardRunner",
    "build_reward_functions",
    "build_reward_runner",
]


def build_reward_functions(cfg: Any, prefix: str = "reward") -> list[tuple[str, float, RewardFunction]]:
    """`RewardConfig` -> (name, weight, function) per source, in order; ConfigError for a bad one.

    A source's name is its type (`math`, `python`, ...); a type used again gets `_<index>` appended
    (`python_2` for `reward.sources[2]`). Names key `RewardResult.source_scores` and the metrics.
    """
    from megatron_rl.config.errors import ConfigError

    if not cfg.sources:
        raise ConfigError(f"{prefix}.sources is empty: add a source, e.g. sources: [{{type: math}}]")
    built, names = [], set()
    for index, source in enumerate(cfg.sources):
        key = f"{prefix}.sources[{index}]"
        cls = REWARD_SOURCES.get(source.type)
        if cls is ScoredByTrainer:
            continue  # a reward model: the trainer scores it on its own ranks (trainer/reward_model/)
        if cls is None:
            raise ConfigError(
                f"{key}.type: '{source.type}' is not supported by the trainer yet: use "
                f"{', '.join(REWARD_SOURCES)} (a python function can call a reward model or server)"
            )
        name = source.type if source.type not in names else f"{source.type}_{index}"
        names.add(name)
        built.append((name, float(source.weight), cls.from_source(source, key)))
    return built


def build_reward_runner(cfg: Any, prefix: str = "reward", **kwargs: Any) -> RewardRunner:
    """`RewardConfig` -> a started `RewardRunner` (`cfg.workers` processes, `cfg.timeout_s` per call).

    Call it on the rank that scores (global rank 0); `close()` it at the end of the run.
    """
    sources = build_reward_functions(cfg, prefix)
    if not sources:  # only a reward model: nothing for the worker processes
        return NoWorkerRewards()
    return RewardRunner(sources, timeout_s=cfg.timeout_s, workers=cfg.workers, **kwargs)
