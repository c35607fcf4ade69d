"""The RL math: advantages, KL, losses, aggregation, reward shaping, filters. Pure torch.

All functions work on [batch, response_len] tensors with a 0/1 response mask and follow verl's
conventions, so numbers can be compared with it. Nothing here is distributed or does I/O; the
trainer supplies global normalizers (see `aggregation`) to keep losses independent of how a
batch is split across data-parallel ranks and micro-batches.
"""
from .advantages import (ADVANTAGE_ESTIMATORS, discounted_returns, gae, group_relative_advantages,
                         process_supervision_advantages, reinforce_plus_plus_advantages,
                         reinforce_plus_plus_baseline_advantages)
from .aggregation import LOSS_AGG_MODES, aggregate, global_normalizer, local_normalizer
from .distillation import distillation_advantages
from .entropy import entropy_from_logits
from .filters import informative_group_mask
from .kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_estimate, kl_penalty_rewards
from .masked import masked_mean, masked_sum, masked_var, masked_whiten
from .mismatch import MISMATCH_LEVELS, MISMATCH_MODES, mismatch_importance_weights
from .policy_loss import RATIO_LEVELS, policy_loss
from .reward_shaping import overlong_penalty
from .value_loss import value_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS", "KL_ESTIMATORS", "LOSS_AGG_MODES", "MISMATCH_LEVELS", "MISMATCH_MODES",
    "RATIO_LEVELS", "AdaptiveKLController", "FixedKLController", "aggregate", "discounted_returns",
    "distillation_advantages",
    "entropy_from_logits", "gae", "global_normalizer", "group_relative_advantages",
    "informative_group_mask", "kl_estimate", "kl_penalty_rewards", "local_normalizer", "masked_mean",
    "masked_sum", "masked_var", "masked_whiten", "mismatch_importance_weights", "overlong_penalty",
    "policy_loss", "process_supervision_advantages", "reinforce_plus_plus_advantages",
    "reinforce_plus_plus_baseline_advantages", "value_loss",
]
