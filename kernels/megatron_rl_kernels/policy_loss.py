"""The clipped-ratio policy loss on logits, with optional KL-to-reference and entropy terms.

What is fused, and what is not: the logits are read once in the forward (log-probability and
entropy per token, one Triton pass) and d logits is written once in the backward by the gradient
kernel, from the saved per-token statistics and the per-token upstream coefficients
(dL/dlogprob, dL/dentropy). Between the two, the loss itself is `megatron_rl.algorithms`'s
policy_loss / kl_estimate / aggregate run in torch under autograd on [B, L] tensors: that part is
~V times smaller than the logits, and reusing the algorithm library makes the values, the metrics
and the gradients those of the reference by construction.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from megatron_rl.algorithms.aggregation import aggregate
from megatron_rl.algorithms.kl import kl_estimate
from megatron_rl.algorithms.policy_loss import policy_loss


def policy_loss_from_logprobs(
    logprobs_and_entropy: Callable, logits: torch.Tensor, labels: torch.Tensor, *,
    old_logprob: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor,
    clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: Optional[float] = None, ratio: str = "token",
    agg: str = "token-mean", is_weights: Optional[torch.Tensor] = None, normalizer=None,
    log_ratio_clamp: float = 20.0, seq_log_ratio_clamp: float = 10.0, ref_logprob: Optional[torch.Tensor] = None, kl_coef: float = 0.0,
    kl_estimator: str = "low_var_kl", entropy_coef: float = 0.0, temperature: float = 1.0, tp_group=None,
    ignore_index: int = -100, vocab_size: Optional[int] = None, return_per_token: bool = False,
    objective: Optional[Callable] = None,
):
    """loss = objective(logprob, ...) + kl_coef * aggregate(kl_estimate(logprob, ref_logprob))
              - entropy_coef * aggregate(entropy), with logprob, entropy = logprobs_and_entropy(logits, labels).

    objective defaults to algorithms.policy_loss with the clip arguments; any entry of
    algorithms.objectives.POLICY_OBJECTIVES with its parameters bound can take its place.
    Returns (loss, metrics) — the objective's metrics plus `pg_loss`, `entropy` (aggregated like the
    loss) and, with ref_logprob, `kl_loss` — and with return_per_token also a dict of detached
    [B, L] tensors: logprob, entropy.
    """
    if kl_coef and ref_logprob is None:
        raise ValueError("kl_coef != 0 needs ref_logprob (the reference policy's log-probabilities)")
    logprob, entropy = logprobs_and_entropy(logits, labels, tp_group=tp_group, temperature=temperature,
                                            ignore_index=ignore_index, vocab_size=vocab_size)
    if objective is None:
        pg_loss, metrics = policy_loss(logprob, old_logprob, advantages, response_mask, clip_low=clip_low,
                                       clip_high=clip_high, dual_clip=dual_clip, ratio=ratio, agg=agg,
                                       is_weights=is_weights, normalizer=normalizer, log_ratio_clamp=log_ratio_clamp,
                                       seq_log_ratio_clamp=seq_log_ratio_clamp)
    else:  # another objective of megatron_rl.algorithms.objectives, its parameters bound
        pg_loss, metrics = objective(logprob, old_logprob, advantages, response_mask, agg=agg, is_weights=is_weights,
                                     normalizer=normalizer)
    loss = pg_loss
    entropy_term = aggregate(entropy, response_mask, agg, normalizer)
    if entropy_coef:
        loss = loss - entropy_coef * entropy_term
    metrics["pg_loss"] = pg_loss.detach()
    metrics["entropy"] = entropy_term.detach()
    if ref_logprob is not None:
        kl_term = aggregate(kl_estimate(logprob, ref_logprob, kl_estimator), response_mask, agg, normalizer)
        if kl_coef:
            loss = loss + kl_coef * kl_term
        metrics["kl_loss"] = kl_term.detach()
    if return_per_token:
        return loss, metrics, {"logprob": logprob.detach(), "entropy": entropy.detach()}
    return loss, metrics


def clipped_policy_loss(logits: torch.Tensor, labels: torch.Tensor, **kwargs):
    """Triton implementation; see megatron_rl.kernels.clipped_policy_loss."""
    from .logprob_entropy import logprobs_and_entropy
    return policy_loss_from_logprobs(logprobs_and_entropy, logits, labels, **kwargs)
