"""Training steps: Megatron at TP=2, DP=2 and PP=2 reproduces plain transformers + AdamW on the same
mini-batch (loss normalisation across micro-batches and DP ranks included); the critic's value head
learns a toy regression; a reward model scores as transformers' sequence classifier does."""
import torch

from dist_harness import run_ranks
from hf_models import make_hf_model, model_config

LR, CLIP, STEPS = 3e-3, 1.0, 3


def _batch(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (4, 10), generator=g)
    mask = torch.zeros(4, 10)
    for row, (start, stop) in enumerate([(3, 10), (4, 6), (2, 9), (5, 10)]):  # uneven response spans
        mask[row, start:stop] = 1
    return ids, mask


def _hf_losses(hf, ids, mask):
    opt = torch.optim.AdamW(hf.parameters(), lr=LR, weight_decay=0.0)
    losses = []
    for _ in range(STEPS):
        logp = torch.log_softmax(hf(ids).logits[:, :-1].double(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        loss = -(logp * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP)
        opt.step()
        losses.append((loss.item(), norm.item()))
    return losses


def _mask_vocab_padding(logits, vocab_size):
    """-inf on the padded vocab columns (the last TP rank's tail): Megatron's own cross entropy,
    used here as an independent loss, does not know the vocab was padded (our kernels take vocab_size)."""
    from megatron.core import parallel_state as ps

    v_local = logits.shape[-1]
    valid = vocab_size - ps.get_tensor_model_parallel_rank() * v_local
    if valid >= v_local:
        return logits
    return logits.masked_fill(torch.arange(v_local) >= valid, float("-inf"))


def _train_worker(hf_dir, arch, tp, pp, ids, mask, recompute="none"):
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_rl.config.schema import OptimConfig, ParallelConfig
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel

    model, parallel = model_config(arch), ParallelConfig(tensor=tp, pipeline=pp)
    init_parallel(parallel, seed=3)
    actor = MegatronRole.build("actor", model, parallel, OptimConfig(lr=LR, grad_clip=CLIP), total_steps=STEPS,
                               hf_path=hf_dir, recompute=recompute)
    total_tokens = mask[:, 1:].sum()  # the global normaliser: every token of the mini-batch

    def loss_fn(logits, mb):
        logits = _mask_vocab_padding(logits, model.vocab_size)
        nll = vocab_parallel_cross_entropy(logits[:, :-1].contiguous(), mb["input_ids"][:, 1:].contiguous())
        return (nll * mb["mask"][:, 1:]).sum() / total_tokens, {"tokens": mb["mask"][:, 1:].sum()}

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    rows = slice(dp_rank * 4 // dp, (dp_rank + 1) * 4 // dp)
    mine = {"input_ids": ids[rows], "mask": mask[rows]}
    micro = [{k: v[i:i + 1] for k, v in mine.items()} for i in range(mine["input_ids"].shape[0])]
    return [actor.train_step(micro, loss_fn) for _ in range(STEPS)]


def test_train_steps_match_transformers_at_tp2_dp2_pp2(tmp_path):
    arch = "qwen2"
    hf = make_hf_model(arch, seed=torch.randint(0, 2**31, ()).item())
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ids, mask = _batch(model_config(arch).vocab_size, seed=1)
    expected, norms = zip(*_hf_losses(hf, ids, mask))
    assert expected[-1] < expected[0]  # it trains at all
    # on 2 ranks: TP=2, DP=2, PP=2; activation recomputation changes memory, not numbers
    for tp, pp, recompute in [(2, 1, "none"), (1, 1, "none"), (1, 2, "none"), (2, 1, "full"), (1, 1, "selective")]:
        for rank, steps in enumerate(run_ranks(_train_worker, 2, str(tmp_path / "hf"), arch, tp, pp, ids, mask,
                                               recompute)):
            got = [s["loss"] for s in steps]
            assert all(abs(g - e) < 2e-5 for g, e in zip(got, expected)), (tp, pp, rank, got, expected)
            assert steps[0]["tokens"] == mask[:, 1:].sum()  # metrics are shares: summed over the 4 pieces
            # clipping uses the full norm (a TP-split weight counted on every TP rank, a replicated one once)
            assert all(abs(s["grad_norm"] - n) < 1e-4 * n for s, n in zip(steps, norms)), (tp, pp, steps, norms)


def _critic_worker(hf_dir, arch, out_dir):
    from megatron_rl.algorithms import value_loss
    from megatron_rl.config.schema import OptimConfig, ParallelConfig
    from megatron_rl.models.hf_io import save_hf
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel

    model, parallel = model_config(arch), ParallelConfig(tensor=2)
    init_parallel(parallel, seed=5)
    critic = MegatronRole.build("critic", model, parallel, OptimConfig(lr=1e-2, grad_clip=1.0), hf_path=hf_dir)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.vocab_size - 1, (8, 12), generator=g)  # the last id is kept for padding
    target = (ids % 2).float() * 2 - 1  # +1 after odd tokens, -1 after even ones: a per-token regression
    mask = torch.ones_like(target)
    before = critic.score({"input_ids": ids}, micro_batch_size=4)["values"]

    def loss_fn(values, mb):
        v = values[..., 0].float()
        loss, metrics = value_loss(v, v.detach(), mb["target"], mb["mask"], clip=None)
        return loss / 2, {"vf_explained_var": metrics["vf_explained_var"]}  # two micro-batches

    batch = {"input_ids": ids, "target": target, "mask": mask}
    losses = [critic.train_step([{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}],
                                loss_fn)["loss"] for _ in range(40)]
    after = critic.score({"input_ids": ids}, micro_batch_size=4)["values"]
    save_hf(critic.chunks, out_dir, model, role="critic")
    return before, after, target, losses, ids


def test_critic_learns_a_toy_regression_and_exports_as_a_classifier(tmp_path):
    import transformers

    arch = "qwen2"
    make_hf_model(arch, seed=11).save_pretrained(tmp_path / "hf", safe_serialization=True)
    before, after, target, losses, ids = run_ranks(_critic_worker, 2, str(tmp_path / "hf"), arch, str(tmp_path / "critic"))[0]
    assert torch.equal(before, torch.zeros_like(before))  # the value head starts at zero
    assert losses[-1] < 0.2 * losses[0], losses
    assert ((after - target) ** 2).mean() < 0.2 * ((before - target) ** 2).mean()
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "critic").eval()
    hf.config.pad_token_id = model_config(arch).vocab_size - 1  # absent from ids: HF pools the last position
    with torch.no_grad():
        last = hf(ids).logits[:, 0]  # equal lengths: HF reads the last position
    assert torch.allclose(last, after[:, -1], atol=1e-4)


def _reward_worker(hf_dir, arch, ids, lengths):
    from megatron_rl.config.schema import ParallelConfig
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel

    init_parallel(ParallelConfig(tensor=1, pipeline=2), seed=5)
    rm = MegatronRole.build("reward", model_config(arch), ParallelConfig(tensor=1, pipeline=2), hf_path=hf_dir)
    return rm.score({"input_ids": ids, "lengths": lengths}, micro_batch_size=2)["rewards"]


def test_reward_model_scores_like_transformers_sequence_classifier(tmp_path):
    import transformers

    arch = "qwen2"
    hf_lm = make_hf_model(arch, seed=12)
    cfg = hf_lm.config
    cfg.num_labels, cfg.pad_token_id = 1, 0
    torch.manual_seed(13)
    rm = transformers.AutoModelForSequenceClassification.from_config(cfg).float().eval()
    rm.save_pretrained(tmp_path / "rm", safe_serialization=True)
    ids = torch.randint(1, cfg.vocab_size, (4, 9))
    lengths = torch.tensor([9, 5, 7, 3])
    for row, n in enumerate(lengths):
        ids[row, n:] = 0  # right padding with the pad token
    with torch.no_grad():
        expected = rm(ids, attention_mask=(ids != 0).long()).logits[:, 0]
    got = run_ranks(_reward_worker, 2, str(tmp_path / "rm"), arch, ids, lengths)
    for r in got:
        assert torch.allclose(r, expected, atol=1e-4), (r, expected)


def _reference_reset_worker(hf_dir, arch):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_rl.config.schema import OptimConfig, ParallelConfig
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel

    model, parallel = model_config(arch).model_copy(update={"kernels": "reference"}), ParallelConfig(tensor=2)
    init_parallel(parallel, seed=5)
    actor = MegatronRole.build("actor", model, parallel, OptimConfig(lr=1e-2), hf_path=hf_dir)
    reference = MegatronRole.build("reference", model, parallel, hf_path=hf_dir)
    ids = torch.randint(0, model.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))

    def loss_fn(logits, mb):
        return vocab_parallel_cross_entropy(logits.contiguous(), mb["input_ids"]).mean(), {}

    for _ in range(2):
        actor.train_step([{"input_ids": ids}], loss_fn)
    score = lambda role: role.score({"input_ids": ids}, micro_batch_size=2)["logprobs"]
    before = (score(actor), score(reference))
    reference.copy_weights_from(actor)
    frozen = all(not p.requires_grad for c in reference.chunks for p in c.parameters())
    return before, score(reference), frozen


def test_reference_is_frozen_and_resets_to_the_actor(tmp_path):
    make_hf_model("qwen2", seed=14).save_pretrained(tmp_path / "hf", safe_serialization=True)
    (actor_lp, ref_lp), reset_lp, frozen = run_ranks(_reference_reset_worker, 2, str(tmp_path / "hf"), "qwen2")[0]
    assert frozen
    assert (actor_lp - ref_lp).abs().max() > 1e-3  # the actor moved away from the reference
    assert torch.equal(reset_lp, actor_lp)


def _precision_worker(hf_dir, dtype):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_rl.config.schema import OptimConfig, ParallelConfig
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel

    model, parallel = model_config("qwen2").model_copy(update={"dtype": dtype}), ParallelConfig(tensor=2)
    init_parallel(parallel, seed=5)
    actor = MegatronRole.build("actor", model, parallel, OptimConfig(lr=3e-3), hf_path=hf_dir)
    ids = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(0))

    def loss_fn(logits, mb):
        return vocab_parallel_cross_entropy(logits.float().contiguous(), mb["input_ids"]).mean(), {}

    losses = [actor.train_step([{"input_ids": ids}], loss_fn)["loss"] for _ in range(5)]
    dtypes = {n: str(p.dtype) for c in actor.chunks for n, p in c.named_parameters()}
    return losses, dtypes


def test_bf16_training_tracks_fp32(tmp_path):
    """bf16 weights with fp32 main params and fp32 gradient reduction (the GPU recipe), run on CPU."""
    make_hf_model("qwen2", seed=15).save_pretrained(tmp_path / "hf", safe_serialization=True)
    fp32, dtypes32 = run_ranks(_precision_worker, 2, str(tmp_path / "hf"), "fp32")[0]
    bf16, dtypes16 = run_ranks(_precision_worker, 2, str(tmp_path / "hf"), "bf16")[0]
    assert set(dtypes32.values()) == {"torch.float32"}
    assert set(dtypes16.values()) == {"torch.bfloat16"}, {n: d for n, d in dtypes16.items() if d != "torch.bfloat16"}
    assert bf16[-1] < bf16[0] - 0.5
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 2e-2, (fp32, bf16)


def test_tied_embeddings_train_across_pipeline_stages(tmp_path):
    """Llama with tied embeddings at PP=2: the first stage's embedding and the last stage's output
    layer are one HF tensor; their gradients must be summed across the stages every step."""
    arch = "llama"
    hf = make_hf_model(arch, seed=torch.randint(0, 2**31, ()).item())
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ids, mask = _batch(model_config(arch).vocab_size, seed=3)
    expected, norms = zip(*_hf_losses(hf, ids, mask))
    for tp, pp in [(1, 2), (2, 1)]:  # PP=2; TP=2 also pads the vocab 97 -> 98
        for rank, steps in enumerate(run_ranks(_train_worker, 2, str(tmp_path / "hf"), arch, tp, pp, ids, mask)):
            got = [s["loss"] for s in steps]
            assert all(abs(g - e) < 2e-5 for g, e in zip(got, expected)), (tp, pp, rank, got, expected)
            assert all(abs(s["grad_norm"] - n) < 1e-4 * n for s, n in zip(steps, norms)), (tp, pp, steps, norms)
