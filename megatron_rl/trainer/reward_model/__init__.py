"""The reward model, in one room on the trainer side: it is a sharded Megatron model, so the
trainer's ranks build, score and train it (rewards/ only knows the source type).

    scorer.py    RewardModelScorer: the `reward_model` reward source in an RL run (scores, normalises)
    training.py  Bradley-Terry training (`megatron-rl rm`), its retraining inside RL (rm.iterative,
                 IterativeRewardModel), the demo's preference data
"""
from .scorer import RewardModelScorer, RunningMeanStd, reward_model_config
from .training import (IterativeRewardModel, bradley_terry_loss, build_reward_role, check_batch_layout,
                       evaluate_pairs, export_reward_model, last_token_rewards, load_pairs,
                       make_arithmetic_preferences, pair_batch, policy_pairs, run_rm, score_pairs,
                       train_pairs_step)

__all__ = [
    "IterativeRewardModel", "RewardModelScorer", "RunningMeanStd", "bradley_terry_loss", "build_reward_role",
    "check_batch_layout", "evaluate_pairs", "export_reward_model", "last_token_rewards", "load_pairs",
    "make_arithmetic_preferences", "pair_batch", "policy_pairs", "reward_model_config", "run_rm", "score_pairs",
    "train_pairs_step",
]
