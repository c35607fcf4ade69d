"""The clipped-ratio policy loss: PPO/GRPO, DAPO clip-higher, dual-clip, GSPO and GSPO-token.

Per token, with ratio r and advantage A:
    loss = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
    dual clip (A < 0 only): loss = min(loss, -A * dual_clip)
The gradient is zero wherever a clipped branch wins. Ratio levels:
    token           r_t = exp(logp_t - old_t)
    sequence        GSPO: s = exp(mean_t(logp_t - old_t)) on every token of the sequence
    sequence-token  GSPO-token: value s, gradient of r_t (s * pi_t / sg(pi_t)), so token-varying
                    advantages can be used; equals `sequence` when A is constant over a sequence
The token log-ratio is clamped to [-log_ratio_clamp, log_ratio_clamp] (20) before exp; the sequence
log-ratio of GSPO to [-seq_log_ratio_clamp, seq_log_ratio_clamp] (10, as verl's GSPO: exp(20) would
scale one sequence's loss by 5e8, and a sequence ratio that far out is clipped anyway). `agg` defaults to
token-mean for every ratio level; the GSPO objective is `ratio="sequence", agg="seq-mean-token-mean"`
(configs/algorithms/gspo.yaml sets both).
"""
from __future__ import annotations

from typing import Optional

import torch

from .aggregation import aggregate
from .masked import as_float, masked_mean

RATIO_LEVELS = ("token", "sequence", "sequence-token")


def _log_ratio(logprob, old_logprob, mask, ratio: str, clamp: float, seq_clamp: float) -> torch.Tensor:
    log_ratio = logprob - old_logprob
    if ratio == "token":
        return log_ratio.clamp(-clamp, clamp)
    seq = masked_mean(log_ratio, mask, dim=-1).clamp(-seq_clamp, seq_clamp)[:, None]  # [B, 1]
    if ratio == "sequence":
        return seq.expand_as(log_ratio)
    if ratio == "sequence-token":
        return logprob - logprob.detach() + seq.detach()
    raise ValueError(f"unknown ratio level {ratio!r}; expected one of {', '.join(RATIO_LEVELS)}")


def policy_loss(logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2,
                dual_clip: Optional[float] = None, ratio: str = "token", agg: str = "token-mean",
                is_weights: Optional[torch.Tensor] = None, normalizer=None,
                log_ratio_clamp: float = 20.0, seq_log_ratio_clamp: float = 10.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns (scalar loss, metrics). `is_weights` (detached) multiply the per-token loss, e.g. the
    train/inference mismatch weights of `mismatch_importance_weights`; `normalizer` is the global
    denominator of `aggregate` for split-invariant micro-batching."""
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (got {dual_clip})")
    if advantages.dim() != 2 or advantages.shape[0] != logprob.shape[0] or advantages.shape[1] not in (1, logprob.shape[1]):
        raise ValueError(f"advantages must be [B, L] or [B, 1] for logprob {tuple(logprob.shape)}, "
                         f"got {tuple(advantages.shape)} (a per-sequence [B] tensor needs [:, None])")
    # fp32 math (fp16 exp overflows above ~11); masked positions get log-ratio 0 so padding with
    # -inf logprobs cannot turn into NaN
    logprob, old_logprob = as_float(logprob), as_float(old_logprob)
    advantages = as_float(advantages).detach()
    mask = response_mask.to(logprob.dtype)
    valid = mask.bool()
    zero = torch.zeros((), dtype=logprob.dtype, device=logprob.device)
    logprob, old_logprob = torch.where(valid, logprob, zero), torch.where(valid, old_logprob, zero)
    log_ratio = _log_ratio(logprob, old_logprob, mask, ratio, log_ratio_clamp, seq_log_ratio_clamp)
    r = torch.exp(log_ratio)
    unclipped = -advantages * r
    clipped = -advantages * r.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    clip_won = clipped > unclipped
    dual_won = torch.zeros_like(clip_won)
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual_won = (advantages < 0) & (bound < per_token)
        per_token = torch.where(dual_won, bound, per_token)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    loss = aggregate(per_token, mask, agg, normalizer)

    with torch.no_grad():
        f = lambda b: masked_mean(b.to(mask.dtype), mask)  # noqa: E731
        big = torch.finfo(r.dtype).max
        metrics = {
            "pg_clipfrac": f(clip_won),
            "pg_clipfrac_high": f(clip_won & (advantages > 0)),
            "pg_clipfrac_low": f(clip_won & (advantages < 0)),
            "pg_dual_clipfrac": f(dual_won),
            "ppo_kl": masked_mean(old_logprob - logprob, mask),  # k1 of old vs current
            "ratio_mean": masked_mean(r, mask),
            "ratio_max": torch.where(mask > 0, r, -big).max(),
            "ratio_min": torch.where(mask > 0, r, big).min(),
        }
    return loss, metrics
