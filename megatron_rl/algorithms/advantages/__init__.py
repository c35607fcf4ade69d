"""Advantage estimators, one file each, behind one registry.

Every registry entry takes the same keyword arguments and returns (advantages, returns), both
[B, L] and 0 where the response mask is 0, so the trainer selects an estimator by config name:

    ADVANTAGE_ESTIMATORS[cfg.advantage](token_rewards=..., response_mask=..., values=...,
                                        group_index=..., gamma=..., lam=..., ...)

`token_rewards` is [B, L]: the outcome score on the last response token, plus any per-token
terms (a KL penalty in the reward, per-step process rewards). Outcome estimators use its row sum.
"""
from __future__ import annotations

from typing import Callable

import torch

from .gae import gae
from .group_relative import group_relative_advantages, group_stats
from .process_supervision import process_supervision_advantages
from .reinforce_plus_plus import (discounted_returns, reinforce_plus_plus_advantages,
                                  reinforce_plus_plus_baseline_advantages)


def _needs(name: str, **given) -> None:
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"advantage estimator {name!r} needs {', '.join(missing)}")


def _outcome(token_rewards, response_mask) -> torch.Tensor:
    return (token_rewards * response_mask.to(token_rewards.dtype)).sum(-1)


def _gae(*, token_rewards, response_mask, values=None, gamma=1.0, lam=1.0, whiten=True, **_):
    _needs("gae", values=values)
    return gae(token_rewards, values, response_mask, gamma=gamma, lam=lam, whiten=whiten)


def _group(leave_one_out: bool):
    def estimator(*, token_rewards, response_mask, group_index=None, norm_by_std=True, eps=1e-6, **_):
        _needs("rloo" if leave_one_out else "grpo", group_index=group_index)
        scores = _outcome(token_rewards.detach(), response_mask)
        adv = group_relative_advantages(scores, group_index, std_normalize=norm_by_std and not leave_one_out,
                                        leave_one_out=leave_one_out, eps=eps)
        adv = adv.to(token_rewards.dtype)[:, None] * response_mask.to(token_rewards.dtype)
        return adv, adv
    return estimator


def _reinforce_pp(*, token_rewards, response_mask, gamma=1.0, **_):
    return reinforce_plus_plus_advantages(token_rewards, response_mask, gamma=gamma)


def _reinforce_pp_baseline(*, token_rewards, response_mask, group_index=None, **_):
    _needs("reinforce_plus_plus_baseline", group_index=group_index)
    return reinforce_plus_plus_baseline_advantages(token_rewards, response_mask, group_index)


def _process(*, token_rewards, response_mask, group_index=None, step_end_mask=None, eps=1e-6, **_):
    _needs("grpo_process", group_index=group_index, step_end_mask=step_end_mask)
    return process_supervision_advantages(token_rewards, step_end_mask, response_mask, group_index, eps=eps)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "gae": _gae,
    "grpo": _group(leave_one_out=False),
    "rloo": _group(leave_one_out=True),
    "reinforce_plus_plus": _reinforce_pp,
    "reinforce_plus_plus_baseline": _reinforce_pp_baseline,
    "grpo_process": _process,
}

__all__ = [
    "ADVANTAGE_ESTIMATORS", "gae", "group_relative_advantages", "group_stats", "discounted_returns",
    "reinforce_plus_plus_advantages", "reinforce_plus_plus_baseline_advantages",
    "process_supervision_advantages",
]
