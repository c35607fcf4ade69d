"""The actor's and the critic's loss functions for MegatronRole.train_step.

Each runs on the last pipeline stage with the model output of one micro-batch and returns that
micro-batch's share of the mini-batch loss: the numerator over the *global* normaliser of the
mini-batch (`normalizer`, the same on every rank), so the shares sum to the mini-batch loss
whatever the micro-batch and data-parallel split (see algorithms.aggregation).

Tensors in a micro-batch are full-row [b, S] (position t refers to token x_t); the logits at
position t predict x_{t+1}, hence the one-column shift below.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import algorithms as A
from ..config.schema import AlgorithmConfig, DistillConfig


def _tp_group():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None


def as_shares(metrics: dict, mask: torch.Tensor, token_count: torch.Tensor, shares: tuple[str, ...]) -> dict:
    """Per-micro-batch metrics -> shares of the mini-batch value, which MegatronRole.train_step sums:
    `shares` already are (numerator over the global normaliser), `_max` / `_min` are extremes, and
    every other metric is a mean over this micro-batch's tokens, weighted here by its share of the
    mini-batch's `token_count` tokens."""
    weight = (mask != 0).sum() / token_count.clamp(min=1)
    return {k: v if k in shares or k.endswith(("_max", "_min")) else v * weight for k, v in metrics.items()}


def mini_batch_tokens(response_mask: torch.Tensor) -> torch.Tensor:
    """The mini-batch's loss tokens (positions 1.. of the mask, as the losses see them)."""
    return (response_mask[:, 1:] != 0).sum().float()


def actor_loss_fn(algo: AlgorithmConfig, *, normalizer: torch.Tensor, token_count: torch.Tensor, temperature: float,
                  vocab_size: int, backend: str = "auto", use_kl_loss: bool, use_is_weights: bool) -> Callable:
    """Clipped-ratio policy loss (+ k-estimator KL to the reference, - entropy bonus) from logits.
    `token_count`: the mini-batch's loss tokens (mini_batch_tokens), for the token-mean metrics."""
    import functools

    from .. import kernels
    from ..algorithms.objectives import objective_from_config

    pl = algo.policy_loss
    base_objective = None if pl.kind == "ppo" else objective_from_config(pl)

    def loss_fn(logits: torch.Tensor, mb: dict):
        shift = lambda key: mb[key][:, 1:]  # noqa: E731  tensor at x_{t+1}, aligned with logits at t
        objective = base_objective
        if pl.kind == "dppo" and pl.dppo.anchor == "rollout":  # the region is centred on the engine's policy
            objective = functools.partial(base_objective, anchor_logprob=shift("rollout_logprobs"))
        loss, metrics = kernels.clipped_policy_loss(
            logits[:, :-1], shift("input_ids"), old_logprob=shift("old_logprobs"), advantages=shift("advantages"),
            response_mask=shift("response_mask"), clip_low=pl.clip_low, clip_high=pl.clip_high,
            dual_clip=pl.dual_clip, ratio=pl.ratio, agg=algo.loss_agg,
            is_weights=shift("is_weights") if use_is_weights else None, normalizer=normalizer,
            log_ratio_clamp=pl.log_ratio_clamp, seq_log_ratio_clamp=pl.seq_log_ratio_clamp,
            ref_logprob=shift("ref_logprobs") if use_kl_loss else None,
            kl_coef=algo.kl.coef if use_kl_loss else 0.0, kl_estimator=algo.kl.estimator,
            entropy_coef=algo.entropy_coef, temperature=temperature, tp_group=_tp_group(), vocab_size=vocab_size,
            backend=backend, objective=objective,
        )
        return loss, as_shares(metrics, shift("response_mask"), token_count, shares=("pg_loss", "entropy", "kl_loss"))

    return loss_fn


def critic_loss_fn(algo: AlgorithmConfig, *, normalizer: torch.Tensor, token_count: torch.Tensor) -> Callable:
    """PPO's clipped value loss; the critic's output at position t - 1 values the state before x_t.
    Its metrics are token-weighted over the micro-batches (vf_explained_var so only approximately:
    a ratio of variances does not split into shares)."""

    def loss_fn(output: torch.Tensor, mb: dict):
        values = shift_values(output[..., 0])
        loss, metrics = A.value_loss(values, mb["values"], mb["returns"], mb["response_mask"], clip=algo.value.clip,
                                     agg=algo.loss_agg, normalizer=normalizer)
        return algo.value.coef * loss, as_shares(metrics, mb["response_mask"], token_count, shares=())

    return loss_fn


def shift_values(raw: torch.Tensor) -> torch.Tensor:
    """Critic head output [b, S] -> values aligned with tokens: V(x_<t) at position t (0 at t = 0)."""
    return torch.nn.functional.pad(raw[:, :-1], (1, 0))


def mini_batch_normalizer(algo: AlgorithmConfig, response_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The denominator of the whole mini-batch's loss (every rank holds the whole mini-batch)."""
    return A.global_normalizer([response_mask[:, 1:]], algo.loss_agg, norm_len=max_new_tokens)


def advantages_and_returns(algo: AlgorithmConfig, batch: dict, *, kl_coef: Optional[float],
                           distill: Optional[DistillConfig] = None) -> tuple[dict, dict]:
    """Token rewards (with the KL penalty when it is placed in the reward) -> advantages, returns;
    with `distill`, the on-policy distillation term (batch["teacher_logprobs"]) added to the
    advantages, or in their place (mode alone)."""
    token_rewards, metrics = batch["token_rewards"], {}
    if kl_coef is not None:  # PPO: r_t - beta * KL_t
        token_rewards, batch_kl = A.kl_penalty_rewards(token_rewards, batch["old_logprobs"], batch["ref_logprobs"],
                                                        batch["response_mask"], kl_coef, algo.kl.estimator)
        metrics["actor/reward_kl"] = batch_kl.item()
    adv, returns = A.ADVANTAGE_ESTIMATORS[algo.advantage](
        token_rewards=token_rewards, response_mask=batch["response_mask"], values=batch.get("values"),
        group_index=batch["group_index"], gamma=algo.gamma, lam=algo.lam, whiten=algo.whiten_advantages,
        norm_by_std=algo.norm_adv_by_std, step_end_mask=batch.get("step_end_mask"),
    )
    mask = batch["response_mask"]
    if distill is not None:
        distilled, reverse_kl = A.distillation_advantages(batch["old_logprobs"], batch["teacher_logprobs"], mask,
                                                          coef=distill.coef)
        adv = distilled if distill.mode == "alone" else adv + distilled
        metrics["distill/reverse_kl"] = reverse_kl.item()
    metrics["actor/advantage_mean"] = A.masked_mean(adv, mask).item()
    metrics["actor/advantage_abs_max"] = (adv.abs() * mask).max().item()
    return {"advantages": adv, "returns": returns}, metrics
