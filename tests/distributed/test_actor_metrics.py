"""The actor's reported metrics are the mini-batch's, whatever the split: the same 8 rows trained as
1, 2, 4 or 8 micro-batches, on one data-parallel rank or two (and with TP=2, PP=2), report the same
entropy, KL, policy loss, clip fraction and ratio extremes, and those equal the metrics of the
policy loss computed on the whole mini-batch at once. (Before, the summed shares were divided by
micro-batches x DP: entropy 1.998 read 0.999 with two micro-batches; ratio_max was averaged.)"""
import pytest
import torch

from dist_harness import run_ranks
from hf_models import make_hf_model, model_config

ROWS, SEQ, MAX_NEW = 8, 12, 8
KEYS = ("entropy", "kl_loss", "pg_loss", "loss", "pg_clipfrac", "ppo_kl", "ratio_mean", "ratio_max", "ratio_min")


def _batch(vocab: int) -> dict:
    g = torch.Generator().manual_seed(5)
    mask = torch.zeros(ROWS, SEQ)
    for r, (start, stop) in enumerate([(3, 12), (4, 6), (2, 9), (5, 12), (3, 4), (6, 12), (2, 11), (4, 10)]):
        mask[r, start:stop] = 1
    return {"input_ids": torch.randint(0, vocab, (ROWS, SEQ), generator=g), "response_mask": mask,
            "old_noise": torch.randn(ROWS, SEQ, generator=g) * 0.3, "ref_noise": torch.randn(ROWS, SEQ, generator=g),
            "advantages": torch.randn(ROWS, 1, generator=g).expand(ROWS, SEQ).contiguous(),
            "lengths": torch.full((ROWS,), SEQ)}


def _algo():
    from megatron_rl.config.schema import AlgorithmConfig

    return AlgorithmConfig(loss_agg="seq-mean-token-mean", kl={"placement": "loss", "coef": 0.1})


def _worker(hf_dir, tp, pp, batch):
    from megatron.core import parallel_state as ps

    from megatron_rl.config.schema import OptimConfig, ParallelConfig
    from megatron_rl.models.forward import split_micro_batches
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel
    from megatron_rl.trainer.batch import data_parallel_shard
    from megatron_rl.trainer.losses import actor_loss_fn, mini_batch_normalizer, mini_batch_tokens

    model, algo = model_config("qwen2"), _algo()
    init_parallel(ParallelConfig(tensor=tp, pipeline=pp), seed=3)
    # a vanishing learning rate: every split below sees the same weights
    actor = MegatronRole.build("actor", model, ParallelConfig(tensor=tp, pipeline=pp), OptimConfig(lr=1e-30),
                               hf_path=hf_dir)
    current = actor.score(batch, micro_batch_size=ROWS)["logprobs"]
    batch = {**batch, "old_logprobs": current + batch["old_noise"], "ref_logprobs": current + batch["ref_noise"]}
    mask = batch["response_mask"]
    make_loss = lambda: actor_loss_fn(  # noqa: E731
        algo, normalizer=mini_batch_normalizer(algo, mask, MAX_NEW), token_count=mini_batch_tokens(mask),
        temperature=1.0, vocab_size=model.vocab_size, backend="reference", use_kl_loss=True, use_is_weights=False)
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    shard = data_parallel_shard(batch, dp_rank, dp)
    out = {mbs: actor.train_step(split_micro_batches(shard, mbs), make_loss()) for mbs in (8, 4, 2, 1) if mbs <= ROWS // dp}

    # the whole mini-batch at once, from the scoring pass (no training schedule, no split)
    scored = actor.score(batch, micro_batch_size=ROWS, with_entropy=True)
    return out, _whole_metrics(scored["logprobs"], scored["entropy"], batch, algo), dp


def _whole_metrics(lp, ent, batch, algo):
    """Aligned [B, S] logprob / entropy (position t: x_t given x_<t) -> the mini-batch's metrics."""
    from megatron_rl import algorithms as A

    shifted = lambda k: batch[k][:, 1:].double()  # noqa: E731
    lp, ent, m = lp[:, 1:].double(), ent[:, 1:].double(), shifted("response_mask")
    pg, metrics = A.policy_loss(lp, shifted("old_logprobs"), shifted("advantages"), m, agg=algo.loss_agg)
    kl = A.aggregate(A.kl_estimate(lp, shifted("ref_logprobs"), algo.kl.estimator), m, algo.loss_agg)
    metrics = {k: v.item() for k, v in metrics.items()}
    metrics.update(pg_loss=pg.item(), entropy=A.aggregate(ent, m, algo.loss_agg).item(), kl_loss=kl.item(),
                   loss=(pg + algo.kl.coef * kl).item())
    return metrics


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 1), (1, 2)], ids=["tp2", "dp2", "pp2"])
def test_metrics_do_not_change_with_micro_batches_or_dp(tmp_path, tp, pp):
    hf = make_hf_model("qwen2", seed=11)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    batch = _batch(model_config("qwen2").vocab_size)
    results = run_ranks(_worker, 2, str(tmp_path / "hf"), tp, pp, batch)
    whole = results[0][1]
    assert whole["entropy"] > 1.0 and whole["ratio_max"] > 1.2 and whole["pg_clipfrac"] > 0  # not a trivial case
    for rank, (by_mbs, _, dp) in enumerate(results):
        assert len(by_mbs) == (3 if dp == 2 else 4)
        for mbs, got in by_mbs.items():
            for key in KEYS:
                assert got[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), (tp, pp, rank, mbs, key)
