"""Triton logprobs_and_entropy against an independent fp64 log_softmax: values and gradients of
both outputs, every input dtype, ragged and small vocabularies, temperatures, peaked rows, and the
known traps (padded tiles, p_label - 1 rounding) as named regression tests."""
import pytest
import torch

from kernels_testlib import (DEVICE, GRAD_TOL, VALUE_TOL, assert_close64, fp64_values_and_grad, randint, randn,
                             run_kernel)
from megatron_rl.kernels import logprob_entropy as triton_impl
from megatron_rl.kernels import logprobs_and_entropy

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def triton_fn(logits, labels, **kwargs):
    return logprobs_and_entropy(logits, labels, backend="triton", **kwargs)


def check_against_fp64(logits, labels, gen, grad_tol, *, outputs=("logprob", "entropy"), **kwargs):
    g_lp = randn(gen, *labels.shape) if "logprob" in outputs else None
    g_ent = randn(gen, *labels.shape) if "entropy" in outputs else None
    lp, ent, grad = run_kernel(triton_fn, logits, labels, g_lp, g_ent, **kwargs)
    ref_lp, ref_ent, ref_grad = fp64_values_and_grad(logits, labels, g_lp, g_ent, **kwargs)
    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == ent.shape == labels.shape
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    assert_close64(lp, ref_lp, **VALUE_TOL)
    assert_close64(ent, ref_ent, **VALUE_TOL)
    assert_close64(grad, ref_grad, **grad_tol)
    return grad, ref_grad


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
@pytest.mark.parametrize("vocab,block_v", [(1000, 256), (300, 512)], ids=["V1000-ragged-blocks", "V300-below-block"])
def test_values_and_grads_match_fp64(gen, dtype, temperature, vocab, block_v):
    logits = randn(gen, 4, 8, vocab, dtype=dtype, scale=3.0)  # [B, L, V]: leading dims are flattened
    labels = randint(gen, vocab, 4, 8)
    labels[0, :2] = -100
    with triton_impl.block_sizes(block_v=block_v, block_t=8):
        check_against_fp64(logits, labels, gen, GRAD_TOL[dtype], temperature=temperature)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_peaked_logits(gen, dtype):
    # logits * 50: near one-hot rows, entropies ~ 1e-20, logits in the hundreds
    logits = randn(gen, 32, 1000, dtype=dtype, scale=50.0)
    labels = randint(gen, 1000, 32)
    labels[:16] = logits[:16].float().argmax(-1)  # half the rows: the label is the near-certain token
    # |x / T| reaches ~300, where fp32 itself is spaced 3e-5: p = exp(x - m - log s) carries a
    # relative error of that order before anything else happens
    tol = dict(GRAD_TOL[dtype], rtol=max(GRAD_TOL[dtype]["rtol"], 1e-4))
    with triton_impl.block_sizes(block_v=256, block_t=16):
        check_against_fp64(logits, labels, gen, tol, temperature=0.7)


@pytest.mark.parametrize("output", ["logprob", "entropy"])
def test_gradient_of_one_output(gen, output):
    # the entropy gradient alone is -p (log p + H) / T: checked against fp64 autograd, fp32 input
    logits = randn(gen, 32, 700, scale=2.0)
    labels = randint(gen, 700, 32)
    check_against_fp64(logits, labels, gen, dict(atol=1e-7, rtol=1e-5), outputs=(output,), temperature=1.3)


def test_regression_padded_vocab_tiles_add_nothing(gen):
    # V not a multiple of the block: the last tile's out-of-range columns must load as -inf. Were
    # they 0, every row (all logits ~ -30) would gain exp(0 - (-30)) terms and a max of 0.
    for vocab, block_v in [(1000, 256), (100, 128), (5, 16)]:
        logits = randn(gen, 16, vocab) - 30.0
        labels = randint(gen, vocab, 16)
        with triton_impl.block_sizes(block_v=block_v, block_t=8):
            check_against_fp64(logits, labels, gen, GRAD_TOL[torch.float32])


def test_regression_label_gradient_when_p_label_near_one(gen):
    # bf16 logits where the label holds all but 1e-1 .. 1e-6 of the mass. Rounding p to bf16 before
    # forming 1 - p (ulp 2**-8 near 1) makes the label's gradient 0 or off by up to ~2e-3; in fp32
    # with one cast at the end it is one bf16 ulp from fp64, up to fp32's absolute ~1e-7.
    n, vocab = 32, 1000
    logits = randn(gen, n, vocab)
    labels = randint(gen, vocab, n)
    rows = torch.arange(n, device=DEVICE)
    logits[rows, labels] += torch.linspace(10.0, 20.0, n, device=DEVICE)
    logits = logits.bfloat16()
    g_lp = torch.ones(n, device=DEVICE)
    _, _, grad = run_kernel(triton_fn, logits, labels, g_lp, None)
    _, _, ref_grad = fp64_values_and_grad(logits, labels, g_lp, None)
    at_label, ref_at_label = grad[rows, labels].double(), ref_grad[rows, labels]
    assert (ref_at_label > 1e-7).all() and (ref_at_label < 1e-2).float().mean() > 0.5  # mostly peaked rows
    tol = dict(rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(at_label, ref_at_label, **tol)
    assert_close64(grad, ref_grad, **GRAD_TOL[torch.bfloat16])
    # the trap this guards against fails the same tolerance
    p_label = torch.softmax(logits.double(), -1)[rows, labels]
    with pytest.raises(AssertionError):
        torch.testing.assert_close(1 - p_label.bfloat16().double(), ref_at_label, **tol)


def test_ignore_index_rows_have_logprob_zero_and_no_logprob_gradient(gen):
    logits = randn(gen, 16, 300)
    labels = randint(gen, 300, 16)
    labels[::3] = -100
    g_lp = randn(gen, 16)
    lp, ent, grad = run_kernel(triton_fn, logits, labels, g_lp, None)
    ignored = labels == -100
    assert (lp[ignored] == 0).all() and (grad[ignored] == 0).all()
    assert (grad[~ignored] != 0).any(dim=-1).all()
    # the entropy of an ignored row is still computed and still has its gradient
    _, ent_ref, grad_ent = fp64_values_and_grad(logits, labels, None, torch.ones(16, device=DEVICE))
    _, _, grad_ent_ours = run_kernel(triton_fn, logits, labels, None, torch.ones(16, device=DEVICE))
    assert_close64(ent, ent_ref, **VALUE_TOL)
    assert_close64(grad_ent_ours[ignored], grad_ent[ignored], **GRAD_TOL[torch.float32])


def test_real_vocab_size_excludes_padding_columns(gen):
    # Megatron pads the embedding past the tokenizer's vocabulary; vocab_size leaves those columns out
    logits = randn(gen, 16, 512)
    labels = randint(gen, 500, 16)
    with triton_impl.block_sizes(block_v=128, block_t=16):
        grad, _ = check_against_fp64(logits, labels, gen, GRAD_TOL[torch.float32], vocab_size=500)
    assert (grad[:, 500:] == 0).all()


def test_strided_logits_are_read_in_place(gen):
    # logits[:, :-1] (next-token prediction) is a 3-D view that cannot be flattened: no copy needed
    full = randn(gen, 3, 9, 400, dtype=torch.bfloat16, scale=2.0)
    labels = randint(gen, 400, 3, 8)
    view = full[:, :-1]
    assert not view.is_contiguous()
    layout = triton_impl.RowLayout(view)
    assert layout.tensor.data_ptr() == view.data_ptr() and layout.stride_outer == 9 * 400
    check_against_fp64(view, labels, gen, GRAD_TOL[torch.bfloat16])
    # a transposed layout (stride over the vocabulary != 1) is copied, and still right
    check_against_fp64(randn(gen, 300, 8).t(), randint(gen, 300, 8), gen, GRAD_TOL[torch.float32])


def test_no_rows(gen):
    logits = randn(gen, 0, 50).requires_grad_(True)
    lp, ent = triton_fn(logits, torch.zeros(0, dtype=torch.long, device=DEVICE))
    (lp.sum() + ent.sum()).backward()
    assert lp.shape == (0,) and logits.grad.shape == (0, 50)
