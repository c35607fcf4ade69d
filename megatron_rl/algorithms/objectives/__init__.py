"""Policy objectives, one file each, behind one registry (`algorithm.policy_loss.kind`).

Every entry takes (logprob, old_logprob, advantages, response_mask) and the keywords agg,
normalizer, is_weights (and anchor_logprob, used by dppo), and returns (scalar loss, metrics) with
the metrics pg_clipfrac, ppo_kl, ratio_mean, ratio_max, ratio_min, so the trainer and the fused
kernel treat them alike:

    ppo    the clipped ratio: PPO / GRPO, clip-higher, dual-clip, GSPO (algorithms/policy_loss.py)
    cispo  clipped, detached importance weight on a REINFORCE term (MiniMax-M1)
    sapo   soft sign-dependent gate instead of the hard clip
    gmpo   geometric mean of the token ratios, clipped per token in log space
    dppo   trust region by the sampled token's probability shift (TV or binary KL), not its ratio

IcePop (masking tokens whose train/inference ratio leaves a band) is a mismatch-correction mode,
not an objective: algorithm.mismatch {mode: mask, level: token} (configs/algorithms/icepop.yaml).
"""
from __future__ import annotations

import functools
from typing import Callable

from ..policy_loss import policy_loss
from .cispo import cispo_loss
from .dppo import dppo_loss
from .gmpo import gmpo_loss
from .sapo import sapo_loss


def _ppo(logprob, old_logprob, advantages, response_mask, *, anchor_logprob=None, **kwargs):
    return policy_loss(logprob, old_logprob, advantages, response_mask, **kwargs)


POLICY_OBJECTIVES: dict[str, Callable] = {"ppo": _ppo, "cispo": cispo_loss, "sapo": sapo_loss, "gmpo": gmpo_loss,
                                          "dppo": dppo_loss}


def objective_from_config(pl) -> Callable:
    """The configured objective (a PolicyLossConfig) with its own parameters bound; the caller adds
    agg, normalizer, is_weights and (dppo) anchor_logprob."""
    if pl.kind == "ppo":
        params = dict(clip_low=pl.clip_low, clip_high=pl.clip_high, dual_clip=pl.dual_clip, ratio=pl.ratio,
                      log_ratio_clamp=pl.log_ratio_clamp, seq_log_ratio_clamp=pl.seq_log_ratio_clamp)
    elif pl.kind == "cispo":
        params = dict(is_high=pl.cispo.is_high, is_low=pl.cispo.is_low, log_ratio_clamp=pl.log_ratio_clamp)
    elif pl.kind == "sapo":
        params = dict(tau_pos=pl.sapo.tau_pos, tau_neg=pl.sapo.tau_neg, log_ratio_clamp=pl.log_ratio_clamp)
    elif pl.kind == "gmpo":
        params = dict(clip_low=pl.gmpo.clip_low, clip_high=pl.gmpo.clip_high)
    elif pl.kind == "dppo":
        params = dict(divergence=pl.dppo.divergence, delta_low=pl.dppo.delta_low, delta_high=pl.dppo.delta_high,
                      ratio_cap=pl.dppo.ratio_cap)
    else:
        raise ValueError(f"unknown policy objective {pl.kind!r}; expected one of {', '.join(POLICY_OBJECTIVES)}")
    return functools.partial(POLICY_OBJECTIVES[pl.kind], **params)


__all__ = ["POLICY_OBJECTIVES", "objective_from_config", "cispo_loss", "dppo_loss", "gmpo_loss", "sapo_loss"]
