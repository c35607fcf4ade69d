"""Vocab-parallel checks run inside spawned gloo ranks (see test_kernels_tp.py).

Every rank builds the same full-vocabulary inputs from a shared seed, keeps its contiguous vocab
slice (Megatron's layout), and compares with the unsharded fp64 reference it computes itself.
"""
import os

import torch
import torch.distributed as dist

def _inputs(seed, n_rows, vocab, hidden_size):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        logits=torch.randn(n_rows, vocab, generator=gen) * 3,
        labels=torch.randint(0, vocab, (n_rows,), generator=gen),
        hidden=torch.randn(n_rows, hidden_size, generator=gen),
        weight=torch.randn(vocab, hidden_size, generator=gen) * 0.4,
        g_lp=torch.randn(n_rows, generator=gen),
        g_ent=torch.randn(n_rows, generator=gen),
        old_noise=torch.randn(n_rows, generator=gen) * 0.25,
        advantages=torch.randn(n_rows, generator=gen),
    )


def _check_group(group, seed, device, backends):
    from kernels_testlib import GRAD_TOL, VALUE_TOL, assert_close64, fp64_logprobs_entropy
    from megatron_rl.algorithms import policy_loss
    from megatron_rl.kernels import clipped_policy_loss, linear_logprobs_and_entropy, logprobs_and_entropy

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    n_local, temperature = 96, 0.7
    vocab = n_local * world
    vocab_size = vocab - 37  # the last rank's slice ends in 37 padding columns (Megatron's padded vocab)
    inputs = {k: v.to(device) for k, v in _inputs(seed + world, 24, vocab, 16).items()}
    labels = inputs["labels"] % vocab_size
    labels[5] = -100
    cols = slice(rank * n_local, (rank + 1) * n_local)

    # unsharded fp64 reference: values, d logits, and for the lm_head d hidden / d weight
    hidden64 = inputs["hidden"].double().requires_grad_(True)
    weight64 = inputs["weight"].double().requires_grad_(True)
    logits64 = inputs["logits"].double().requires_grad_(True)
    ref = {}
    for name, x in (("plain", logits64), ("linear", hidden64 @ weight64.T)):
        lp, ent = fp64_logprobs_entropy(x, labels, temperature=temperature, vocab_size=vocab_size)
        ((lp * inputs["g_lp"]).sum() + (ent * inputs["g_ent"]).sum()).backward()
        ref[name] = (lp.detach(), ent.detach())

    for backend in backends:
        # 1. logprobs_and_entropy on a vocab slice
        local = inputs["logits"][:, cols].clone().requires_grad_(True)
        lp, ent = logprobs_and_entropy(local, labels, tp_group=group, temperature=temperature,
                                       vocab_size=vocab_size, backend=backend)
        ((lp * inputs["g_lp"]).sum() + (ent * inputs["g_ent"]).sum()).backward()
        assert_close64(lp, ref["plain"][0], **VALUE_TOL)
        assert_close64(ent, ref["plain"][1], **VALUE_TOL)
        assert_close64(local.grad, logits64.grad[:, cols], **GRAD_TOL[torch.float32])

        # 2. the fused lm_head on a slice of the weight: d_hidden is this rank's partial sum
        hidden = inputs["hidden"].clone().requires_grad_(True)
        weight = inputs["weight"][cols].clone().requires_grad_(True)
        lp, ent = linear_logprobs_and_entropy(hidden, weight, labels, tp_group=group, temperature=temperature,
                                              vocab_size=vocab_size, chunk_size=40, backend=backend)
        ((lp * inputs["g_lp"]).sum() + (ent * inputs["g_ent"]).sum()).backward()
        assert_close64(lp, ref["linear"][0], **VALUE_TOL)
        assert_close64(ent, ref["linear"][1], **VALUE_TOL)
        assert_close64(weight.grad, weight64.grad[cols], atol=1e-5, rtol=1e-4)
        d_hidden = hidden.grad.clone()
        assert not torch.allclose(d_hidden.double(), hidden64.grad, atol=1e-3)  # a partial sum, not reduced
        dist.all_reduce(d_hidden, group=group)
        assert_close64(d_hidden, hidden64.grad, atol=1e-5, rtol=1e-4)

        # 3. the clipped policy loss on a slice: same loss and metrics on every rank, d logits slice
        mask = torch.ones(4, 6, device=device)
        mask[1, 4:] = 0
        old = (ref["plain"][0] + inputs["old_noise"]).float().view(4, 6)
        kwargs = dict(old_logprob=old, advantages=inputs["advantages"].view(4, 6), response_mask=mask,
                      dual_clip=3.0, clip_high=0.28, agg="seq-mean-token-mean", temperature=temperature,
                      vocab_size=vocab_size)
        local = inputs["logits"][:, cols].clone().view(4, 6, n_local).requires_grad_(True)
        loss, metrics = clipped_policy_loss(local, labels.view(4, 6), tp_group=group, backend=backend, **kwargs)
        loss.backward()
        full = inputs["logits"].double().view(4, 6, vocab).requires_grad_(True)
        lp64, _ = fp64_logprobs_entropy(full, labels.view(4, 6), temperature=temperature, vocab_size=vocab_size)
        kwargs.pop("temperature"), kwargs.pop("vocab_size")
        ref_loss, ref_metrics = policy_loss(lp64, **kwargs)
        ref_loss.backward()
        assert_close64(loss, ref_loss, atol=1e-6, rtol=1e-5)
        for name, value in ref_metrics.items():
            assert_close64(metrics[name], value, atol=1e-6, rtol=1e-5, msg=name)
        assert_close64(local.grad, full.grad[..., cols], atol=1e-7, rtol=1e-4)

        # 4. the last rank's slice is all padding (vocab_size <= its first column): it adds nothing
        short_vocab = (world - 1) * n_local - 5
        short_labels = torch.where(labels >= 0, labels % short_vocab, labels)
        local = inputs["logits"][:, cols].clone().requires_grad_(True)
        hidden = inputs["hidden"].clone().requires_grad_(True)
        lp, ent = logprobs_and_entropy(local, short_labels, tp_group=group, vocab_size=short_vocab, backend=backend)
        lp_lin, ent_lin = linear_logprobs_and_entropy(hidden, inputs["weight"][cols], short_labels, tp_group=group,
                                                      vocab_size=short_vocab, chunk_size=40, backend=backend)
        (lp.sum() + ent.sum() + lp_lin.sum() + ent_lin.sum()).backward()
        ref_lp, ref_ent = fp64_logprobs_entropy(inputs["logits"].double(), short_labels, vocab_size=short_vocab)
        ref_lin = fp64_logprobs_entropy(inputs["hidden"].double() @ inputs["weight"].double().T, short_labels,
                                        vocab_size=short_vocab)
        for got, expected in ((lp, ref_lp), (ent, ref_ent), (lp_lin, ref_lin[0]), (ent_lin, ref_lin[1])):
            assert_close64(got, expected, **VALUE_TOL)
        if rank == world - 1:
            assert (local.grad == 0).all() and (hidden.grad == 0).all()


def _check_unequal_shards(group, device, backends):
    """Shards of 602 and 601 columns (1203 split unevenly): every backend raises on every rank (before
    the check the logprob came out 12.8 off, silently)."""
    import pytest

    from megatron_rl.kernels import linear_logprobs_and_entropy, logprobs_and_entropy

    rank = dist.get_rank(group)
    n_local = 602 - rank % 2
    labels = torch.zeros(3, dtype=torch.long, device=device)
    for backend in backends:
        with pytest.raises(ValueError, match="vocabulary shards differ in size"):
            logprobs_and_entropy(torch.randn(3, n_local, device=device), labels, tp_group=group, backend=backend)
        with pytest.raises(ValueError, match="vocabulary shards differ in size"):
            linear_logprobs_and_entropy(torch.randn(3, 8, device=device), torch.randn(n_local, 8, device=device),
                                        labels, tp_group=group, backend=backend)


def run(rank, world_size, init_file, seed, device_type):
    # the interpreter choice must be made before triton is imported (the parent's env is inherited,
    # this keeps the worker right when started some other way)
    if device_type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        # every rank creates every group, in the same order
        pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])] if world_size == 4 else [dist.group.WORLD]
        groups = [pairs[rank // 2], dist.group.WORLD]  # TP=2 and TP=4
        for group in groups:
            _check_group(group, seed, torch.device(device_type), backends=("triton", "reference"))
        _check_unequal_shards(groups[0], torch.device(device_type), backends=("triton", "reference"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
