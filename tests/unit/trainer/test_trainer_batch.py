"""The trainer's batch layout and slicing (pure tensors, no Megatron)."""
import torch

from megatron_rl import algorithms as A
from megatron_rl.config.schema import AlgorithmConfig
from megatron_rl.rollout.types import Sample
from megatron_rl.trainer.batch import build_batch, data_parallel_shard, mini_batches, pad_rows, trim_columns
from megatron_rl.trainer.losses import advantages_and_returns, mini_batch_normalizer, shift_values


def _samples():
    return [
        Sample(prompt_ids=[1, 2], response_ids=[5, 6, 7], logprobs=[-0.1, -0.2, -0.3], finish_reason="stop", prompt_index=0),
        Sample(prompt_ids=[1, 2], response_ids=[8], logprobs=[-0.5], finish_reason="stop", prompt_index=0),
        Sample(prompt_ids=[3, 4, 9], response_ids=[5, 6], logprobs=[-1.0, -2.0], finish_reason="length", prompt_index=1),
        Sample(prompt_ids=[3, 4, 9], response_ids=[], logprobs=[], finish_reason="length", prompt_index=1),
    ]


def test_build_batch_layout():
    b = build_batch(_samples(), [1.0, 0.0, 0.5, 0.25], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 5, 6, 7], [1, 2, 8, 0, 0], [3, 4, 9, 5, 6], [3, 4, 9, 0, 0]]
    assert b["response_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
    assert torch.allclose(b["rollout_logprobs"][0], torch.tensor([0, 0, -0.1, -0.2, -0.3]))
    assert torch.allclose(b["rollout_logprobs"][2], torch.tensor([0, 0, 0, -1.0, -2.0]))
    # the outcome reward sits on the last response token; an empty response carries none
    assert b["token_rewards"].tolist() == [[0, 0, 0, 0, 1.0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0.5], [0, 0, 0, 0, 0]]
    assert b["lengths"].tolist() == [5, 3, 5, 3] and b["response_lengths"].tolist() == [3, 1, 2, 0]
    assert b["group_index"].tolist() == [0, 0, 1, 1]


def test_pad_rows_adds_masked_copies_and_shards_split_evenly():
    b = build_batch(_samples()[:3], [1.0, 0.0, 0.5])
    p = pad_rows(b, 4)
    assert p["input_ids"].shape[0] == 4 and p["response_mask"][3].sum() == 0
    assert torch.equal(p["input_ids"][3], b["input_ids"][0])
    assert pad_rows(p, 2) is p  # already even
    shards = [data_parallel_shard(p, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([s["input_ids"] for s in shards]), p["input_ids"])


def test_mini_batches_cover_every_row_once_and_trim():
    b = build_batch(_samples(), [1.0, 0.0, 0.5, 0.25])
    g = torch.Generator().manual_seed(0)
    parts = mini_batches(b, 2, shuffle=True, generator=g)
    seen = sorted(tuple(r) for p in parts for r in p["input_ids"].tolist())
    assert seen == sorted(tuple(r) for r in b["input_ids"].tolist())
    short = trim_columns({k: v[[1, 3]] if torch.is_tensor(v) and v.dim() else v for k, v in b.items()})
    assert short["input_ids"].shape[1] == 3 and short["response_mask"].shape[1] == 3


def test_grpo_advantages_follow_group_scores_on_response_tokens():
    b = build_batch(_samples(), [1.0, 0.0, 0.5, 0.25])
    adv, _ = advantages_and_returns(AlgorithmConfig(advantage="grpo"), b, kl_coef=None)
    a = adv["advantages"]
    # group 0: scores (1, 0): mean 0.5, unbiased std 0.7071 -> +-0.7071 on every response token
    assert torch.allclose(a[0], torch.tensor([0, 0, 1, 1, 1]) * 0.5 / (0.5 ** 0.5 + 1e-6), atol=1e-5)
    assert torch.allclose(a[1], torch.tensor([0, 0, -1.0, 0, 0]) * 0.5 / (0.5 ** 0.5 + 1e-6), atol=1e-5)
    assert a[3].abs().sum() == 0  # no response tokens


def test_ppo_kl_in_reward_and_gae_returns():
    b = build_batch(_samples()[:1], [1.0])
    b["old_logprobs"] = torch.tensor([[0, 0, -1.0, -1.0, -1.0]])
    b["ref_logprobs"] = torch.tensor([[0, 0, -1.5, -1.0, -0.5]])
    b["values"] = torch.zeros(1, 5)
    algo = AlgorithmConfig(advantage="gae", gamma=1.0, lam=1.0, whiten_advantages=False)
    adv, metrics = advantages_and_returns(algo.model_copy(update={"kl": algo.kl.model_copy(update={"estimator": "k1"})}),
                                          b, kl_coef=0.1)
    # k1 = old - ref = (0.5, 0, -0.5): rewards (-0.05, 0, 1 + 0.05); returns are the reward-to-go
    assert torch.allclose(adv["returns"][0], torch.tensor([0, 0, 1.0, 1.05, 1.05]), atol=1e-6)
    assert abs(metrics["actor/reward_kl"]) < 1e-7  # mean of (0.5, 0, -0.5)


def test_values_shift_and_normalizer():
    raw = torch.tensor([[1.0, 2.0, 3.0]])
    assert shift_values(raw).tolist() == [[0.0, 1.0, 2.0]]
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.float32)
    tok = mini_batch_normalizer(AlgorithmConfig(loss_agg="token-mean"), mask, 16)
    seq = mini_batch_normalizer(AlgorithmConfig(loss_agg="seq-mean-token-mean"), mask, 16)
    norm = mini_batch_normalizer(AlgorithmConfig(loss_agg="seq-mean-token-sum-norm"), mask, 16)
    assert (tok.item(), seq.item(), norm.item()) == (3.0, 2.0, 32.0)  # -norm: budget 16 x 2 sequences
    assert A.aggregate(torch.ones(2, 2), mask[:, 1:], "token-mean", tok).item() == 1.0
