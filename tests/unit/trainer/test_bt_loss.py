"""The Bradley-Terry loss, the policy-sample preference pairs and the replay mix of rm.iterative,
against hand-computed values (no Megatron, no processes)."""
import math

import pytest
import torch

from megatron_rl.trainer.reward_model import RunningMeanStd
from megatron_rl.trainer.reward_model import training as rm

# chosen - rejected = 1, -1, 0 (a tie counts as wrong)
CHOSEN = torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64)
REJECTED = torch.tensor([1.0, 1.5, -1.0], dtype=torch.float64)
# -log sigmoid(x) = log(1 + exp(-x)):
#   x = 1: log(1 + e^-1) = 0.31326168751822286
#   x = -1: log(1 + e) = 1.31326168751822286
#   x = 0: log 2 = 0.69314718055994531
LOSSES = [0.31326168751822286, 1.31326168751822286, 0.69314718055994531]
# margin 0.5: x - 0.5 = 0.5, -1.5, -0.5
LOSSES_MARGIN = [0.47407698418010663, 1.70141327798275246, 0.97407698418010663]


def test_loss_accuracy_and_margin_against_hand_computed_fp64():
    loss, m = rm.bradley_terry_loss(CHOSEN, REJECTED)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - sum(LOSSES) / 3) < 1e-15
    assert m["accuracy"].item() == pytest.approx(1 / 3, abs=1e-15)
    assert m["margin"].item() == 0.0
    assert m["chosen"].item() == pytest.approx(0.5, abs=1e-15) and m["rejected"].item() == pytest.approx(0.5, abs=1e-15)
    with_margin, _ = rm.bradley_terry_loss(CHOSEN, REJECTED, margin=0.5)
    assert abs(with_margin.item() - sum(LOSSES_MARGIN) / 3) < 1e-15


def test_gradient_is_minus_sigmoid_of_minus_the_difference():
    chosen, rejected = CHOSEN.clone().requires_grad_(), REJECTED.clone().requires_grad_()
    loss, _ = rm.bradley_terry_loss(chosen, rejected)
    loss.backward()
    # d/dc -log sigmoid(c - r) = -(1 - sigmoid(c - r)) = -1 / (1 + e^(c - r)), over 3 pairs
    expected = torch.tensor([-1 / (1 + math.e), -1 / (1 + math.exp(-1)), -0.5], dtype=torch.float64) / 3
    assert torch.allclose(chosen.grad, expected, atol=1e-15, rtol=0)
    assert torch.allclose(rejected.grad, -expected, atol=1e-15, rtol=0)


def test_micro_batch_shares_sum_to_the_global_mean():
    """What train_step relies on: each micro-batch's sum over the global pair count."""
    full, _ = rm.bradley_terry_loss(CHOSEN, REJECTED)
    first, _ = rm.bradley_terry_loss(CHOSEN[:2], REJECTED[:2], normalizer=3)
    second, _ = rm.bradley_terry_loss(CHOSEN[2:], REJECTED[2:], normalizer=3)
    assert abs((first + second).item() - full.item()) < 1e-15


def test_pair_batch_interleaves_and_rewards_are_read_at_the_last_token():
    pairs = [([5, 6, 7], [5, 6, 8, 9]), ([4, 1], [4, 2, 3])]
    batch = rm.pair_batch(pairs, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [5, 6, 8, 9], [4, 1, 0, 0], [4, 2, 3, 0]]
    assert batch["lengths"].tolist() == [3, 4, 2, 3]
    head = torch.arange(16, dtype=torch.float32).reshape(4, 4, 1)  # [b, s, 1]: value = 4 * row + position
    assert rm.last_token_rewards(head, batch["lengths"]).tolist() == [2.0, 7.0, 9.0, 14.0]


def test_policy_pairs_best_with_worst_while_scores_differ():
    ids = torch.arange(70).reshape(7, 10)
    lengths = torch.tensor([3, 4, 5, 6, 2, 2, 3])
    # group 0: scores 1, 0, 1, 0.5 -> ranked rows 0, 2, 3, 1 -> pairs (0, 1), (2, 3)
    # group 1: all tie -> none; group 2: one sample -> none
    scores = [1.0, 0.0, 1.0, 0.5, 2.0, 2.0, 7.0]
    group = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    pairs = rm.policy_pairs(ids, lengths, scores, group)
    assert pairs == [(list(range(0, 3)), list(range(10, 14))), (list(range(20, 25)), list(range(30, 36)))]
    # three samples 2, 1, 0: only best vs worst (the middle one is left out)
    three = rm.policy_pairs(ids[:3], lengths[:3], [2.0, 1.0, 0.0], torch.tensor([0, 0, 0]))
    assert three == [(list(range(0, 3)), list(range(20, 25)))]


class _Scorer:
    role = object()

    def __init__(self):
        self.resets = 0

    def reset_normalization(self):
        self.resets += 1


def test_retrain_mixes_fresh_pairs_with_a_replay_share(monkeypatch):
    from megatron_rl.config.schema import RMConfig

    seen = []

    def fake_step(role, pairs, **kwargs):
        seen.append(list(pairs))
        return {"loss": 0.5, "accuracy": 0.25 * len(seen), "margin": 1.0, "grad_norm": 2.0}

    monkeypatch.setattr(rm, "train_pairs_step", fake_step)
    cfg = RMConfig(batch_size=4, micro_batch_size=2,
                   iterative={"enabled": True, "steps": 3, "replay_fraction": 0.25, "buffer_size": 10})
    scorer = _Scorer()
    it = rm.IterativeRewardModel(scorer, cfg, seed=0, pad_id=0, dp_rank=0, dp=1)
    old = [([i], [100 + i]) for i in range(8)]
    it.buffer = list(old)
    it.recent = [([50 + i], [150 + i]) for i in range(9)]
    out = it.retrain()
    # 9 fresh -> round(9 * 0.25 / 0.75) = 3 older pairs; 3 steps x 4 pairs from those 12
    assert out["rm/pairs_fresh"] == 9 and out["rm/pairs_replay"] == 3
    assert [len(b) for b in seen] == [4, 4, 4]
    drawn = [p for b in seen for p in b]
    assert len(set(map(str, drawn))) == 12  # one pass over the mix: each pair once
    assert sum(p in old for p in drawn) == 3
    assert out["rm/accuracy_before"] == 0.25 and out["rm/accuracy"] == pytest.approx(0.5)
    # the buffer keeps the newest 10: the last 1 of the old 8, then the 9 fresh
    assert it.buffer == old[-1:] + [([50 + i], [150 + i]) for i in range(9)] and out["rm/buffer_pairs"] == 10
    assert it.recent == [] and scorer.resets == 1
    # nothing fresh: no training, nothing reset
    seen.clear()
    assert it.retrain() == {"rm/pairs_fresh": 0.0} and seen == [] and scorer.resets == 1


def test_running_mean_std_matches_the_whole_history():
    torch.manual_seed(0)
    batches = [torch.randn(n, dtype=torch.float64) * 3 + 1 for n in (5, 1, 12)]
    stats = RunningMeanStd()
    for b in batches:
        stats.update(b)
    everything = torch.cat(batches)
    assert stats.count == 18
    assert abs(stats.mean - everything.mean().item()) < 1e-12
    assert abs(stats.std - everything.std().item()) < 1e-12  # unbiased, as torch.std


def test_reward_model_score_is_weighted_and_optionally_normalised():
    from megatron_rl.trainer.reward_model import RewardModelScorer

    raw = torch.tensor([1.0, 3.0, 2.0, 6.0])
    plain = RewardModelScorer(None, name="reward_model", weight=0.5, normalize="none", path="x")
    added, metrics = plain.transform(raw)
    assert added.tolist() == [0.5, 1.5, 1.0, 3.0] and metrics["reward/reward_model_mean"] == 3.0
    running = RewardModelScorer(None, name="reward_model", weight=2.0, normalize="running", path="x")
    running.transform(torch.tensor([0.0, 4.0]))  # history: 0, 4
    added, metrics = running.transform(raw)  # history: 0, 4, 1, 3, 2, 6 -> mean 8/3, unbiased std
    history = torch.tensor([0.0, 4.0, 1.0, 3.0, 2.0, 6.0], dtype=torch.float64)
    expected = 2.0 * (raw.double() - history.mean()) / history.std()
    assert torch.allclose(added.double(), expected, atol=1e-6)
    assert metrics["reward/reward_model_raw_mean"] == 3.0
    assert metrics["reward/reward_model_running_mean"] == pytest.approx(8 / 3, abs=1e-12)
    running.reset_normalization()  # after a retrain: the next batch alone sets the scale
    added, _ = running.transform(raw)
    assert torch.allclose(added.double(), 2.0 * (raw.double() - 3.0) / raw.double().std(), atol=1e-6)


def test_a_reward_model_alone_needs_no_reward_workers():
    from megatron_rl.config.schema import RewardConfig, RewardSource
    from megatron_rl.rewards import RewardInput, build_reward_functions, build_reward_runner

    cfg = RewardConfig(sources=[RewardSource(type="math"), RewardSource(type="reward_model", path="rm/hf")])
    assert [name for name, _, _ in build_reward_functions(cfg)] == ["math"]  # the trainer scores the model
    alone = build_reward_runner(RewardConfig(sources=[RewardSource(type="reward_model", path="rm/hf")]))
    result = alone.score([RewardInput(prompt="1+1=", response="2", answer="2")] * 3)
    assert result.scores == [0.0] * 3 and result.failed == [False] * 3
    alone.close()
