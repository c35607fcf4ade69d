"""Shared pieces of the kernel tests: device, tolerances, an independent fp64 reference."""
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F64 = torch.float64

# Outputs are fp32 whatever the input dtype and are compared with fp64 on the same (rounded) input
# values, so one tolerance serves all dtypes. Gradients come back in the input dtype: one rounding,
# and the interpreter truncates fp32 -> bf16 (a GPU rounds to nearest), hence 1 ulp for bf16.
VALUE_TOL = dict(atol=2e-5, rtol=1e-5)
GRAD_TOL = {
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-6, rtol=1e-3),  # half ulp 4.9e-4; fp16 subnormals are spaced 6e-8
    torch.bfloat16: dict(atol=1e-6, rtol=2**-7),
}


def randn(gen, *shape, dtype=torch.float32, scale=1.0):
    """Random normal values drawn on the CPU generator, then moved to the test device."""
    return (torch.randn(*shape, generator=gen, dtype=torch.float32) * scale).to(DEVICE, dtype)


def randint(gen, high, *shape):
    return torch.randint(0, high, shape, generator=gen).to(DEVICE)


def fp64_logprobs_entropy(logits, labels, temperature=1.0, ignore_index=-100, vocab_size=None):
    """Independent fp64 reference (log_softmax): returns (logprob, entropy) with autograd to `logits`
    (which the caller makes an fp64 leaf)."""
    x = logits[..., :vocab_size] if vocab_size is not None else logits
    logp = torch.log_softmax(x / temperature, dim=-1)
    ignored = labels == ignore_index
    picked = logp.gather(-1, labels.masked_fill(ignored, 0)[..., None]).squeeze(-1)
    logprob = torch.where(ignored, torch.zeros((), dtype=logp.dtype, device=logp.device), picked)
    entropy = -(logp.exp() * logp).sum(-1)
    return logprob, entropy


def fp64_values_and_grad(logits, labels, g_logprob, g_entropy, **kwargs):
    """(logprob, entropy, d logits) in fp64 for upstream gradients (g_logprob, g_entropy); either may be None."""
    x = logits.detach().to(F64).requires_grad_(True)
    logprob, entropy = fp64_logprobs_entropy(x, labels, **kwargs)
    total = sum((out * g.to(F64)).sum() for out, g in ((logprob, g_logprob), (entropy, g_entropy)) if g is not None)
    total.backward()
    return logprob.detach(), entropy.detach(), x.grad


def run_kernel(fn, logits, labels, g_logprob, g_entropy, **kwargs):
    """(logprob, entropy, d logits) from one of our implementations."""
    x = logits.detach().clone().requires_grad_(True)
    logprob, entropy = fn(x, labels, **kwargs)
    terms = [(out * g).sum() for out, g in ((logprob, g_logprob), (entropy, g_entropy)) if g is not None]
    sum(terms).backward()
    return logprob.detach(), entropy.detach(), x.grad


def assert_close64(actual, expected, **tol):
    torch.testing.assert_close(actual.to(F64), expected.to(F64), **tol)
