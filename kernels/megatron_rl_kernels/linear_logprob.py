"""The lm_head matmul fused with logprobs/entropy, chunked over the vocabulary.

logits = hidden @ weight.T is never materialised whole. For each slice of `chunk_size` vocab rows
of the weight, a torch matmul (cuBLAS: no point re-writing a GEMM) computes the [tokens, chunk]
logits into one reused buffer, and the Triton statistics kernel folds them into the running
per-token (max, sum exp, entropy accumulator, label logit) — the same online merge as across
tensor-parallel ranks, so a chunk is a "virtual rank". The backward recomputes each chunk's
logits, overwrites them in place with d logits (the gradient kernel), and does
    d_weight[chunk] = d_logits.T @ hidden      (complete: one matmul per chunk, no accumulation)
    d_hidden      += d_logits @ weight[chunk]  (fp32 accumulator when there are several chunks)
Chunking over the vocabulary rather than tokens keeps d_weight exact without an fp32 [V, H]
accumulator; the extra memory is one [tokens, chunk] buffer (+ [tokens, H] fp32 in backward).

d_hidden is the partial sum over this rank's vocab slice: the caller's tensor-parallel backward
(Megatron's copy-to-tensor-parallel-region before a ColumnParallelLinear) all-reduces it.
"""
from __future__ import annotations

from typing import Optional

import torch

from .logprob_entropy import RowLayout, launch_grad, launch_stats
from .vocab_parallel import check_inputs, local_vocab, merge_stats_across_ranks

CHUNK_BYTES = 256 * 2**20  # default logits chunk budget
CHUNK_MULTIPLE = 256  # keeps the per-chunk GEMM shapes tensor-core friendly


def default_chunk_size(n_tokens: int, n_cols: int, element_size: int) -> int:
    cols = CHUNK_BYTES // max(1, n_tokens * element_size)
    cols = max(CHUNK_MULTIPLE, cols // CHUNK_MULTIPLE * CHUNK_MULTIPLE)
    return max(1, min(cols, n_cols))


def _contiguous_2d(buffer: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return buffer[: rows * cols].view(rows, cols)


class _LinearLogprobsAndEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature, ignore_index, vocab_size, tp_group, chunk_size):
        hidden2d = hidden.reshape(-1, hidden.shape[-1])
        flat_labels = labels.reshape(-1).contiguous()
        n_tokens = hidden2d.shape[0]
        start, n_valid, world = local_vocab(weight.shape[0], tp_group, vocab_size)
        chunk = chunk_size or default_chunk_size(n_tokens, n_valid, hidden.element_size())
        chunks = [(c0, min(chunk, n_valid - c0)) for c0 in range(0, n_valid, chunk)]
        widest = max((w for _, w in chunks), default=0)
        buffer = torch.empty(n_tokens * widest, dtype=hidden.dtype, device=hidden.device)
        common = dict(temperature=temperature, ignore_index=ignore_index)

        stats = torch.empty(4, n_tokens, dtype=torch.float32, device=hidden.device)
        stats[0], stats[1:] = float("-inf"), 0.0  # (m, s, a, x_label) of an empty slice
        result = None
        for i, (c0, width) in enumerate(chunks):
            logits = torch.mm(hidden2d, weight[c0:c0 + width].t(), out=_contiguous_2d(buffer, n_tokens, width))
            last = i == len(chunks) - 1
            result = launch_stats(RowLayout(logits), flat_labels, n_cols=width, col_offset=start + c0, stats=stats,
                                  accumulate=i > 0, finalize=last and world == 1, **common)
        if not isinstance(result, tuple):  # several ranks (or nothing local): merge across TP
            result = merge_stats_across_ranks(stats, flat_labels, ignore_index, tp_group,
                                              n_local=weight.shape[0])
        logprob, entropy, max_, log_sum = result
        del buffer

        ctx.save_for_backward(hidden, weight, flat_labels, max_, log_sum, entropy)
        ctx.chunks, ctx.start, ctx.common = chunks, start, common
        ctx.set_materialize_grads(False)
        return logprob.view(labels.shape), entropy.view(labels.shape)

    @staticmethod
    def backward(ctx, g_logprob, g_entropy):
        hidden, weight, flat_labels, max_, log_sum, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (g_logprob is None and g_entropy is None) or not (need_hidden or need_weight):
            return (None,) * 8
        flat = lambda g: None if g is None else g.reshape(-1).float().contiguous()  # noqa: E731
        g_logprob, g_entropy = flat(g_logprob), flat(g_entropy)
        hidden2d = hidden.reshape(-1, hidden.shape[-1])
        n_tokens, chunks = hidden2d.shape[0], ctx.chunks

        # contiguous, so each chunk's rows are a valid `out=`; padded vocab rows stay 0
        d_weight = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if need_weight else None
        d_hidden = None
        if need_hidden:
            # several chunks: sum the partial products in fp32 (one rounding at the end, as the
            # unchunked d_logits @ weight has)
            low_precision = hidden.dtype in (torch.bfloat16, torch.float16)
            acc_dtype = torch.float32 if len(chunks) > 1 and low_precision else hidden.dtype
            d_hidden = torch.zeros(hidden2d.shape, dtype=acc_dtype, device=hidden.device)
        widest = max((w for _, w in chunks), default=0)
        buffer = torch.empty(n_tokens * widest, dtype=hidden.dtype, device=hidden.device)
        for c0, width in chunks:
            w = weight[c0:c0 + width]
            logits = torch.mm(hidden2d, w.t(), out=_contiguous_2d(buffer, n_tokens, width))
            d_logits = launch_grad(RowLayout(logits), flat_labels, max_, log_sum, entropy, g_logprob, g_entropy,
                                   n_cols=width, col_offset=ctx.start + c0, out=logits, **ctx.common)
            if need_weight:
                torch.mm(d_logits.t(), hidden2d, out=d_weight[c0:c0 + width])
            if need_hidden:
                if d_hidden.dtype == hidden.dtype:
                    d_hidden.addmm_(d_logits, w)
                else:
                    d_hidden += torch.mm(d_logits, w)
        if d_hidden is not None:
            d_hidden = d_hidden.to(hidden.dtype).view(hidden.shape)
        return d_hidden, d_weight, None, None, None, None, None, None


def linear_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, tp_group=None,
                                temperature: float = 1.0, ignore_index: int = -100,
                                vocab_size: Optional[int] = None, chunk_size: Optional[int] = None):
    """Triton implementation; see megatron_rl.kernels.linear_logprobs_and_entropy."""
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden [..., H] and weight [V_local, H] do not match: "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden and weight dtypes differ: {hidden.dtype} vs {weight.dtype}")
    if hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the triton kernels take fp32/fp16/bf16 inputs, got {hidden.dtype}")
    check_inputs(hidden.shape[:-1], labels, temperature)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _LinearLogprobsAndEntropy.apply(hidden, weight, labels.long(), float(temperature), int(ignore_index),
                                           vocab_size, tp_group, chunk_size)
