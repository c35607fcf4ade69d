"""Fused kernels for the RL hot path, installed as `megatron_rl.kernels` (docs/kernels.md).

    logprobs_and_entropy(logits, labels, ...)                  per-token log p(label) and entropy
    clipped_policy_loss(logits, labels, old_logprob=..., ...)  the clipped policy loss on logits
    linear_logprobs_and_entropy(hidden, weight, labels, ...)   the same fused with the lm_head

Each takes `backend="auto" | "triton" | "reference"` (the config key `model.kernels`): auto uses the
Triton kernels where they can run (CUDA tensors, or CPU tensors with TRITON_INTERPRET=1) and the
eager torch reference (`megatron_rl.kernels.reference`) otherwise. Triton is imported only when
it is used, so the reference works without it.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Callable, Optional

import torch

from . import reference

__all__ = ["BACKENDS", "kernels_available", "resolve_backend", "logprobs_and_entropy", "clipped_policy_loss",
           "linear_logprobs_and_entropy", "reference"]

BACKENDS = ("auto", "triton", "reference")


def _interpreting() -> bool:
    import triton
    return bool(triton.knobs.runtime.interpret)


def _why_triton_cannot_run(device_type: str, dtype: torch.dtype = torch.float32) -> Optional[str]:
    """None if the Triton kernels can run on such tensors, else the reason."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if dtype == torch.float64:
        return "the triton kernels compute in fp32 and do not take fp64 inputs"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device_type != "cpu":
        return f"no triton kernels for {device_type} tensors"
    if not _interpreting():
        return "a CPU tensor needs TRITON_INTERPRET=1 (the triton interpreter)"
    loaded = sys.modules.get(__name__ + ".logprob_entropy")
    if loaded is not None and not loaded.INTERPRETED:
        return "the kernels were compiled for the GPU before TRITON_INTERPRET=1 was set"
    return None


def kernels_available(device: Optional[torch.device | str] = None) -> bool:
    """Whether the Triton kernels can run on `device` (default: cuda if present, else cpu)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _why_triton_cannot_run(torch.device(device).type) is None


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """"triton" or "reference" for inputs like `tensor`; backend="triton" where Triton cannot run
    raises a RuntimeError with the reason on one line."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernels backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return "reference"
    reason = _why_triton_cannot_run(tensor.device.type, tensor.dtype)
    if reason is None:
        return "triton"
    if backend == "triton":
        raise RuntimeError(f"kernels backend 'triton' cannot run here: {reason} (use backend='auto' or 'reference')")
    return "reference"


def logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, *, tp_group=None, temperature: float = 1.0,
                         ignore_index: int = -100, vocab_size: Optional[int] = None, backend: str = "auto"):
    """Per-token log-probability of `labels` and entropy of softmax(logits / temperature).

    logits [..., V_local] (bf16/fp16/fp32; with tp_group, this rank's contiguous slice of the
    vocabulary, Megatron's layout), labels [...] int64 global token ids. Returns (logprob, entropy),
    fp32 [...], identical on every rank of tp_group. A label equal to ignore_index gets logprob 0
    and no gradient (its entropy is still computed). vocab_size: the real vocabulary size, if the
    logits carry padding columns beyond it (they are then excluded). Differentiable in both outputs.
    """
    if resolve_backend(backend, logits) == "reference":
        fn = reference.logprobs_and_entropy
    else:
        from .logprob_entropy import logprobs_and_entropy as fn
    return fn(logits, labels, tp_group=tp_group, temperature=temperature, ignore_index=ignore_index,
              vocab_size=vocab_size)


def clipped_policy_loss(logits: torch.Tensor, labels: torch.Tensor, *, old_logprob: torch.Tensor,
                        advantages: torch.Tensor, response_mask: torch.Tensor, clip_low: float = 0.2,
                        clip_high: float = 0.2, dual_clip: Optional[float] = None, ratio: str = "token",
                        agg: str = "token-mean", is_weights: Optional[torch.Tensor] = None, normalizer=None,
                        log_ratio_clamp: float = 20.0, seq_log_ratio_clamp: float = 10.0,
                        ref_logprob: Optional[torch.Tensor] = None,
                        kl_coef: float = 0.0, kl_estimator: str = "low_var_kl", entropy_coef: float = 0.0,
                        temperature: float = 1.0, tp_group=None, ignore_index: int = -100,
                        vocab_size: Optional[int] = None, return_per_token: bool = False, backend: str = "auto",
                        objective: Optional[Callable] = None):
    """The clipped-ratio policy loss computed from logits [B, L, V_local] and labels [B, L].

    Equals megatron_rl.algorithms.policy_loss(logprob, old_logprob, advantages, response_mask, ...)
    with logprob from logprobs_and_entropy, plus `kl_coef * aggregate(kl_estimate(logprob,
    ref_logprob, kl_estimator))` and `- entropy_coef * aggregate(entropy)` (aggregated with `agg`
    and `normalizer`). Returns (loss, metrics): policy_loss's metrics plus pg_loss, entropy and,
    with ref_logprob, kl_loss; return_per_token=True adds a third element, detached [B, L]
    logprob and entropy. `objective`: another policy objective in place of the clipped ratio (an
    entry of megatron_rl.algorithms.objectives with its parameters bound); the clip arguments are
    then unused.
    """
    kwargs = dict(old_logprob=old_logprob, advantages=advantages, response_mask=response_mask, clip_low=clip_low,
                  clip_high=clip_high, dual_clip=dual_clip, ratio=ratio, agg=agg, is_weights=is_weights,
                  normalizer=normalizer, log_ratio_clamp=log_ratio_clamp,
                  seq_log_ratio_clamp=seq_log_ratio_clamp, ref_logprob=ref_logprob, kl_coef=kl_coef,
                  kl_estimator=kl_estimator, entropy_coef=entropy_coef, temperature=temperature, tp_group=tp_group,
                  ignore_index=ignore_index, vocab_size=vocab_size, return_per_token=return_per_token,
                  objective=objective)
    if resolve_backend(backend, logits) == "reference":
        fn = reference.clipped_policy_loss
    else:
        from .policy_loss import clipped_policy_loss as fn
    return fn(logits, labels, **kwargs)


def linear_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, tp_group=None,
                                temperature: float = 1.0, ignore_index: int = -100,
                                vocab_size: Optional[int] = None, chunk_size: Optional[int] = None,
                                backend: str = "auto"):
    """logprobs_and_entropy(hidden @ weight.T, labels) without materialising the logits.

    hidden [..., H], weight [V_local, H] (this rank's vocab slice of the output layer), labels [...].
    chunk_size: vocabulary rows of the weight per chunk (default: a 256 MiB logits chunk, a multiple
    of 256). The gradient of hidden is this rank's partial sum; the caller's tensor-parallel
    backward reduces it (as for Megatron's ColumnParallelLinear), it is not all-reduced here.
    """
    if resolve_backend(backend, hidden) == "reference":
        fn = reference.linear_logprobs_and_entropy
    else:
        from .linear_logprob import linear_logprobs_and_entropy as fn
    return fn(hidden, weight, labels, tp_group=tp_group, temperature=temperature, ignore_index=ignore_index,
              vocab_size=vocab_size, chunk_size=chunk_size)
