"""linear_logprobs_and_entropy (the fused, vocab-chunked lm_head) against fp64: values, d_hidden and
d_weight, for one chunk, ragged chunks, padded vocab rows, temperatures, 3-D hidden states."""
import pytest
import torch

from kernels_testlib import DEVICE, VALUE_TOL, assert_close64, fp64_logprobs_entropy, randint, randn
from megatron_rl.kernels import linear_logprob, linear_logprobs_and_entropy, logprobs_and_entropy

H, V = 32, 1000


def fused(hidden, weight, labels, g_lp, g_ent, **kwargs):
    hidden = hidden.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    lp, ent = linear_logprobs_and_entropy(hidden, weight, labels, backend="triton", **kwargs)
    ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
    return lp.detach(), ent.detach(), hidden.grad, weight.grad


def fp64(hidden, weight, labels, g_lp, g_ent, **kwargs):
    hidden = hidden.detach().double().requires_grad_(True)
    weight = weight.detach().double().requires_grad_(True)
    lp, ent = fp64_logprobs_entropy(hidden @ weight.T, labels, **kwargs)
    ((lp * g_lp.double()).sum() + (ent * g_ent.double()).sum()).backward()
    return lp.detach(), ent.detach(), hidden.grad, weight.grad


def rel_err(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("chunk_size", [None, 256, 1000], ids=["one-chunk", "ragged-chunks", "exact"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fp32_matches_fp64(gen, chunk_size, temperature):
    hidden, weight = randn(gen, 2, 20, H), randn(gen, V, H, scale=0.4)
    labels = randint(gen, V, 2, 20)
    labels[1, 3] = -100
    g_lp, g_ent = randn(gen, 2, 20), randn(gen, 2, 20)
    lp, ent, d_hidden, d_weight = fused(hidden, weight, labels, g_lp, g_ent, chunk_size=chunk_size,
                                        temperature=temperature)
    ref = fp64(hidden, weight, labels, g_lp, g_ent, temperature=temperature)
    assert_close64(lp, ref[0], **VALUE_TOL)
    assert_close64(ent, ref[1], **VALUE_TOL)
    assert d_hidden.shape == hidden.shape and d_weight.shape == weight.shape
    assert_close64(d_hidden, ref[2], atol=1e-5, rtol=1e-4)
    assert_close64(d_weight, ref[3], atol=1e-5, rtol=1e-4)


def test_bf16(gen):
    # the logits are bf16 (as F.linear gives them), so compare with our kernel on those logits for
    # the values, and with fp64 for the gradients at bf16 precision
    hidden, weight = randn(gen, 48, H, dtype=torch.bfloat16), randn(gen, V, H, dtype=torch.bfloat16, scale=0.4)
    labels = randint(gen, V, 48)
    g_lp, g_ent = randn(gen, 48), randn(gen, 48)
    lp, ent, d_hidden, d_weight = fused(hidden, weight, labels, g_lp, g_ent, chunk_size=384)
    unfused_lp, unfused_ent = logprobs_and_entropy(hidden @ weight.T, labels, backend="triton")
    torch.testing.assert_close(lp, unfused_lp, atol=2e-2, rtol=1e-2)  # chunked GEMMs may round differently
    torch.testing.assert_close(ent, unfused_ent, atol=2e-2, rtol=1e-2)
    ref = fp64(hidden, weight, labels, g_lp, g_ent)
    assert d_hidden.dtype == d_weight.dtype == torch.bfloat16
    assert rel_err(d_hidden, ref[2]) < 2e-2 and rel_err(d_weight, ref[3]) < 2e-2


def test_padded_vocab_rows(gen):
    hidden, weight = randn(gen, 24, H), randn(gen, 512, H, scale=0.4)
    labels = randint(gen, 500, 24)
    g_lp, g_ent = randn(gen, 24), randn(gen, 24)
    lp, ent, d_hidden, d_weight = fused(hidden, weight, labels, g_lp, g_ent, chunk_size=200, vocab_size=500)
    ref = fp64(hidden, weight[:500], labels, g_lp, g_ent)
    assert_close64(lp, ref[0], **VALUE_TOL)
    assert_close64(ent, ref[1], **VALUE_TOL)
    assert_close64(d_hidden, ref[2], atol=1e-5, rtol=1e-4)
    assert_close64(d_weight[:500], ref[3], atol=1e-5, rtol=1e-4)
    assert (d_weight[500:] == 0).all()


def test_gradient_of_one_input_only(gen):
    hidden, weight = randn(gen, 16, H), randn(gen, 300, H, scale=0.4)
    labels = randint(gen, 300, 16)
    ref = fp64(hidden, weight, labels, torch.ones(16, device=DEVICE), torch.zeros(16, device=DEVICE))
    frozen_weight = weight.clone()
    h = hidden.clone().requires_grad_(True)
    linear_logprobs_and_entropy(h, frozen_weight, labels, chunk_size=128)[0].sum().backward()
    assert_close64(h.grad, ref[2], atol=1e-5, rtol=1e-4)
    w = weight.clone().requires_grad_(True)
    linear_logprobs_and_entropy(hidden, w, labels, chunk_size=128)[0].sum().backward()
    assert_close64(w.grad, ref[3], atol=1e-5, rtol=1e-4)


def test_default_chunk_size_bounds_the_logits_chunk():
    # 16384 tokens x 151936 vocab in bf16: 8192-column chunks, 256 MiB each
    assert linear_logprob.default_chunk_size(16384, 151936, 2) == 8192
    assert linear_logprob.default_chunk_size(64, 1000, 4) == 1000
    assert linear_logprob.default_chunk_size(10**7, 151936, 2) == 256  # never below one GEMM-friendly tile
