"""The `reward_model` reward source: a Bradley-Terry reward model scored on the trainer's ranks
(the reward runner's workers never see it; rewards/ only knows its type).

    reward:
      sources:
        - {type: math}
        - {type: reward_model, path: outputs/rm/hf, weight: 0.5, normalize: running}

`path` is an HF *ForSequenceClassification checkpoint with one label (what `megatron-rl rm`
exports). Unlike the rule-based sources, which run in the reward runner's worker processes on
rank 0, the reward model is a Megatron `reward` role built on every rank with the run's TP/PP
layout; the trainer scores the step's (prompt + response) rows with it in its score phase,
DP-sharded like the old and reference logprobs, and adds `weight * score` to the rule-based sum.

It reads the policy's token ids as they are (no decode / re-encode), so it must use the policy's
tokenizer; that is checked when it is built. The score is read at each row's last token (the EOS
when the response stopped, the last generated token when it was cut at max_new_tokens).

normalize: `none` adds the raw score; `running` adds (score - mean) / std over every score seen
so far (count, mean and M2 accumulated in float64, identical on every rank; saved in checkpoints;
restarted when the model is retrained by rm.iterative, since its scale changes).
"""
from __future__ import annotations

import math
from typing import Optional

import torch


class RunningMeanStd:
    """Count, mean and sum of squared deviations (M2), merged batch by batch (Chan et al.)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: torch.Tensor) -> None:
        x = values.detach().double()
        n = x.numel()
        if n == 0:
            return
        batch_mean = x.mean().item()
        batch_m2 = ((x - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


def reward_model_config(path: str, policy, parallel, key: str):
    """The reward model's ModelConfig from `path`/config.json (config.hf.side_model_config)."""
    from ...config.hf import side_model_config

    return side_model_config(path, policy, parallel, key, what="reward model", classifier=True,
                             hint="point it at a reward model exported by `megatron-rl rm` (rm.output_dir/hf) or "
                                  "another *ForSequenceClassification checkpoint with one label")


class RewardModelScorer:
    """A reward model built on every rank (collective); see the module docstring.

    Built with `optim` (rm.iterative) it is wrapped for training; without, it only scores.
    """


    def __init__(self, role, *, name: str, weight: float, normalize: str, path: str):
        self.role, self.name, self.weight, self.normalize, self.path = role, name, weight, normalize, path
        self.stats = RunningMeanStd()

    @classmethod
    def from_config(cls, cfg, *, optim=None, total_steps: int = 1,
                    prefix: str = "reward") -> Optional["RewardModelScorer"]:
        """The run's reward_model source built on this rank (None when there is none).

        `cfg` is the RunConfig: the policy's model (dtype, kernels, tokenizer, vocab) and the parallel
        layout decide how the reward model is built.
        """
        from ...data.prompts import check_same_tokenizer
        from ...models.role import MegatronRole

        found = [(i, s) for i, s in enumerate(cfg.reward.sources) if s.type == "reward_model"]
        if not found:
            return None
        index, source = found[0]
        key = f"{prefix}.sources[{index}].path"
        model = reward_model_config(source.path, cfg.model, cfg.parallel, key)
        check_same_tokenizer(source.path, cfg.data.tokenizer or cfg.model.hf_path, key, what="reward model")
        role = MegatronRole.build("reward", model, cfg.parallel, optim, total_steps=total_steps, hf_path=source.path)
        # one reward_model source at most (schema), so its metric name is the type, as for the others
        return cls(role, name="reward_model", weight=float(source.weight), normalize=source.normalize or "none",
                   path=source.path)

    def score(self, shard: dict, *, micro_batch_size: int) -> torch.Tensor:
        """Raw scores [rows] of this rank's rows (`input_ids`, `lengths`); collective over model parallel."""
        return self.role.score({"input_ids": shard["input_ids"], "lengths": shard["lengths"]},
                               micro_batch_size=micro_batch_size)["rewards"].float()

    def transform(self, raw: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Raw scores of the whole step [B] -> what is added to the rule-based sum (weight * score,
        normalised when asked) and the metrics. Identical on every rank (same input, same stats)."""
        value = raw.float()
        metrics = {f"reward/{self.name}_raw_mean": value.mean().item()}
        if self.normalize == "running":
            self.stats.update(value)  # this step's scores count: the first step is normalised too
            value = (value - self.stats.mean) / max(self.stats.std, 1e-6)
            metrics[f"reward/{self.name}_running_mean"] = self.stats.mean
            metrics[f"reward/{self.name}_running_std"] = self.stats.std
        metrics[f"reward/{self.name}_mean"] = value.mean().item()  # unweighted, like the other sources
        return self.weight * value, metrics

    def reset_normalization(self) -> None:
        self.stats = RunningMeanStd()

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state["stats"])
