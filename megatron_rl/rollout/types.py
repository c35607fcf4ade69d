"""What every rollout engine takes and returns, and the protocol it implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Mirrors config.schema.SamplingConfig (and SGLang's sampling_params). temperature 0: greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 1024
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, cfg) -> "SamplingParams":
        return cls(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                   stop=tuple(cfg.stop), stop_token_ids=tuple(cfg.stop_token_ids))


@dataclass
class Sample:
    """One response. `logprobs[i]` is the engine's log p(response_ids[i] | prefix) under
    softmax(logits / temperature) (temperature 1 when greedy), before top-k/top-p renormalisation,
    which is what the trainer recomputes."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (stop token or string) or "length"
    weight_version: int = 0
    prompt_index: int = 0  # which prompt of the batch: samples of one prompt form a group


@dataclass
class RolloutBatch:
    samples: list[Sample] = field(default_factory=list)

    def groups(self) -> list[list[Sample]]:
        by_prompt: dict[int, list[Sample]] = {}
        for s in self.samples:
            by_prompt.setdefault(s.prompt_index, []).append(s)
        return [by_prompt[k] for k in sorted(by_prompt)]


class RolloutEngine(Protocol):
    """An inference engine the trainer drives: generate, take new weights, give memory back."""

    weight_version: int

    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> RolloutBatch:
        """n samples for each prompt (token ids); samples of one prompt are adjacent."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: Optional[int] = None) -> int:
        """Load full HF-named tensors (any subset); returns how many were loaded."""

    def release_memory(self) -> None:
        """Free weights / KV cache while the trainer uses the device (colocated placement)."""

    def resume_memory(self) -> None: ...

    def health(self) -> bool: ...

    def shutdown(self) -> None: ...
