"""The eager reference against fp64, and the backend dispatcher."""
import pytest
import torch

import megatron_rl.kernels as K
from kernels_testlib import (DEVICE, F64, GRAD_TOL, VALUE_TOL, assert_close64, fp64_values_and_grad, randint, randn,
                             run_kernel)
from megatron_rl.kernels import reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, F64], ids=str)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reference_matches_fp64(gen, dtype, temperature):
    logits = randn(gen, 4, 6, 333, dtype=dtype, scale=4.0)
    labels = randint(gen, 333, 4, 6)
    labels[1, 2] = -100
    g_lp, g_ent = randn(gen, 4, 6), randn(gen, 4, 6)
    lp, ent, grad = run_kernel(reference.logprobs_and_entropy, logits, labels, g_lp, g_ent, temperature=temperature)
    ref_lp, ref_ent, ref_grad = fp64_values_and_grad(logits, labels, g_lp, g_ent, temperature=temperature)
    assert lp.dtype == (F64 if dtype == F64 else torch.float32)
    tight = dict(atol=1e-12, rtol=1e-12)
    assert_close64(lp, ref_lp, **(tight if dtype == F64 else VALUE_TOL))
    assert_close64(ent, ref_ent, **(tight if dtype == F64 else VALUE_TOL))
    # autograd through the fp32 copy, cast back once: the same tolerance as the kernels'
    assert_close64(grad, ref_grad, **(tight if dtype == F64 else GRAD_TOL[dtype]))


def test_reference_peaked_and_padded_vocab(gen):
    logits = randn(gen, 16, 512, dtype=F64, scale=50.0)
    labels = randint(gen, 500, 16)
    lp, ent, grad = run_kernel(reference.logprobs_and_entropy, logits, labels, randn(gen, 16), randn(gen, 16),
                               vocab_size=500)
    ref_lp, ref_ent = fp64_values_and_grad(logits, labels, None, torch.ones(16, device=DEVICE), vocab_size=500)[:2]
    assert_close64(lp, ref_lp, atol=1e-12, rtol=1e-12)
    assert_close64(ent, ref_ent, atol=1e-12, rtol=1e-9)
    assert (grad[:, 500:] == 0).all()


def test_reference_linear_is_linear_then_logprobs(gen):
    hidden, weight = randn(gen, 2, 5, 16, dtype=F64), randn(gen, 90, 16, dtype=F64)
    labels = randint(gen, 90, 2, 5)
    lp, ent = reference.linear_logprobs_and_entropy(hidden, weight, labels, chunk_size=7)
    ref_lp, ref_ent = fp64_values_and_grad(hidden @ weight.T, labels, None, torch.ones(2, 5, device=DEVICE))[:2]
    assert_close64(lp, ref_lp, atol=1e-12, rtol=1e-12)
    assert_close64(ent, ref_ent, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# dispatcher

def test_backend_choice_and_errors(monkeypatch):
    x32 = torch.zeros(2, 3, device=DEVICE)
    assert K.kernels_available()
    assert K.resolve_backend("auto", x32) == "triton"
    assert K.resolve_backend("triton", x32) == "triton"
    assert K.resolve_backend("reference", x32) == "reference"
    # fp64 stays on the reference: the kernels compute in fp32
    x64 = x32.double()
    assert K.resolve_backend("auto", x64) == "reference"
    with pytest.raises(RuntimeError, match="cannot run here: .*fp64"):
        K.resolve_backend("triton", x64)
    with pytest.raises(ValueError, match="unknown kernels backend 'cuda'"):
        K.resolve_backend("cuda", x32)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert K.resolve_backend("auto", x) == "reference"
    assert not K.kernels_available("cpu")
    with pytest.raises(RuntimeError) as err:
        K.resolve_backend("triton", x)
    assert "\n" not in str(err.value) and "TRITON_INTERPRET=1" in str(err.value)


def test_public_functions_dispatch(gen):
    logits = randn(gen, 8, 300)
    labels = randint(gen, 300, 8)
    triton_out = K.logprobs_and_entropy(logits, labels, backend="triton")
    reference_out = K.logprobs_and_entropy(logits, labels, backend="reference")
    auto_out = K.logprobs_and_entropy(logits, labels)
    for a, b, c in zip(triton_out, reference_out, auto_out):
        torch.testing.assert_close(a, b, **VALUE_TOL)
        assert torch.equal(a, c)
    # fp64 input under "auto" runs the reference and keeps fp64
    assert K.logprobs_and_entropy(logits.double(), labels)[0].dtype == F64
    hidden, weight = randn(gen, 8, 16), randn(gen, 300, 16)
    for backend in ("triton", "reference"):
        lp, _ = K.linear_logprobs_and_entropy(hidden, weight, labels, backend=backend)
        torch.testing.assert_close(lp, K.logprobs_and_entropy(hidden @ weight.T, labels)[0], **VALUE_TOL)


def test_input_validation(gen):
    logits = randn(gen, 4, 10)
    with pytest.raises(ValueError, match="leading shape"):
        K.logprobs_and_entropy(logits, torch.zeros(5, dtype=torch.long, device=DEVICE))
    with pytest.raises(TypeError, match="int64"):
        K.logprobs_and_entropy(logits, torch.zeros(4, device=DEVICE))
    with pytest.raises(ValueError, match="temperature"):
        K.logprobs_and_entropy(logits, torch.zeros(4, dtype=torch.long, device=DEVICE), temperature=0.0)
