"""Triton kernels: per-token log-probability of the label and entropy of softmax(logits / T).

Forward, one pass over each row's logits with fp32 online statistics (x = logits.float() / T):
    m  = max_j x_j                      (running, rescaled as it grows)
    s  = sum_j exp(x_j - m)
    a  = sum_j exp(x_j - m) (x_j - m)
    xy = x_label                        (only on the rank/chunk that owns the label column)
    logprob = (xy - m) - log s          entropy = log s - a / s
Both outputs are formed from differences to m, so large logits (peaked rows) lose no precision to a
large lse. Columns at or beyond `n_cols` (the ragged last tile, Megatron's padded vocab rows) load
as -inf and add exactly nothing.

Vocab-parallel (TP): each rank runs the same pass over its contiguous vocab slice, then
`vocab_parallel.merge_stats_across_ranks` does one MAX all-reduce of m ([tokens]) and one SUM
all-reduce of (s, a, xy) rescaled to the global max ([3, tokens]): two small collectives.

Backward, no collective: p = exp((x - m) - log s) is recomputed from the logits and the saved
per-token (m, log s, H), and the gradient is written once, in the logits' dtype:
    d x_j = g_lp (1[j = label] - p_j) - g_ent p_j (log p_j + H)        (d logits = d x / T)
The one-hot term is formed in fp32 and cast once (bf16 rounding of p_label - 1 is the classic bug).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

from .vocab_parallel import check_inputs, local_vocab, merge_stats_across_ranks

# The interpreter is chosen when the @triton.jit decorators run, i.e. when this module is imported.
INTERPRETED = bool(triton.knobs.runtime.interpret)

# kernels may only read constexpr globals
_NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _row_offsets(rows, rows_inner, stride_outer, stride_inner):
    # Row r of the flattened [..., V] view lives at (r // rows_inner, r % rows_inner) of a 3-D
    # strided layout; a plain 2-D (or viewable) tensor uses rows_inner = n_rows, stride_outer = 0.
    # int64: tokens x vocab overflows int32 at realistic sizes (16384 x 151936 > 2**31).
    rows = rows.to(tl.int64)
    return (rows // rows_inner) * stride_outer + (rows % rows_inner) * stride_inner


@triton.jit
def _stats_kernel(
    logits_ptr, labels_ptr, stats_ptr, logprob_ptr, entropy_ptr, max_ptr, log_sum_ptr,
    n_rows, rows_inner, stride_outer, stride_inner,
    n_cols, col_offset, temperature, ignore_index,
    ACCUMULATE: tl.constexpr, FINALIZE: tl.constexpr, SCALE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Online (m, s, a, xy) over columns [0, n_cols) of BLOCK_T rows.

    ACCUMULATE: start from the raw stats already in stats_ptr (a previous vocab chunk).
    FINALIZE: write logprob, entropy, m, log s; otherwise write the raw stats [4, n_rows] back.
    """
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < n_rows
    row_ptrs = logits_ptr + _row_offsets(rows, rows_inner, stride_outer, stride_inner)

    if ACCUMULATE:
        m = tl.load(stats_ptr + rows, mask=row_ok, other=_NEG_INF)
        s = tl.load(stats_ptr + n_rows + rows, mask=row_ok, other=0.0)
        a = tl.load(stats_ptr + 2 * n_rows + rows, mask=row_ok, other=0.0)
        xy = tl.load(stats_ptr + 3 * n_rows + rows, mask=row_ok, other=0.0)
    else:
        m = tl.full([BLOCK_T], _NEG_INF, tl.float32)
        s = tl.zeros([BLOCK_T], tl.float32)
        a = tl.zeros([BLOCK_T], tl.float32)
        xy = tl.zeros([BLOCK_T], tl.float32)

    cols = tl.arange(0, BLOCK_V)
    for start in range(0, n_cols, BLOCK_V):
        col_ok = (start + cols) < n_cols
        x = tl.load(row_ptrs[:, None] + (start + cols)[None, :], mask=row_ok[:, None] & col_ok[None, :],
                    other=_NEG_INF).to(tl.float32)
        if SCALE:
            x = x / temperature
        m_new = tl.maximum(m, tl.max(x, axis=1))
        # Rows that have seen only -inf so far: any finite reference keeps exp() at 0 and NaN-free.
        m_ref = tl.where(m_new == _NEG_INF, 0.0, m_new)
        rescale = tl.exp(m - m_ref)
        e = tl.exp(x - m_ref[:, None])
        # a was relative to the old max: sum e'(x - m_old) -> rescale * (a + s (m_old - m_new)).
        # The where()s keep 0 * -inf (s == 0 while m_old is -inf; e == 0 at -inf columns) from
        # ever being formed: those terms are 0.
        a = rescale * (a + s * tl.where(s > 0, m - m_ref, 0.0))
        a += tl.sum(e * tl.where(e > 0, x - m_ref[:, None], 0.0), axis=1)
        s = rescale * s + tl.sum(e, axis=1)
        m = m_new

    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index)
    label_col = labels - col_offset
    owned = row_ok & (labels != ignore_index) & (label_col >= 0) & (label_col < n_cols)
    x_label = tl.load(row_ptrs + label_col, mask=owned, other=0.0).to(tl.float32)
    if SCALE:
        x_label = x_label / temperature
    xy += tl.where(owned, x_label, 0.0)

    if FINALIZE:
        s = tl.where(row_ok, s, 1.0)  # rows past the end: nothing to store, no log(0)
        log_s = tl.log(s)
        logprob = tl.where(labels != ignore_index, (xy - m) - log_s, 0.0)
        tl.store(logprob_ptr + rows, logprob, mask=row_ok)
        tl.store(entropy_ptr + rows, log_s - a / s, mask=row_ok)
        tl.store(max_ptr + rows, m, mask=row_ok)
        tl.store(log_sum_ptr + rows, log_s, mask=row_ok)
    else:
        tl.store(stats_ptr + rows, m, mask=row_ok)
        tl.store(stats_ptr + n_rows + rows, s, mask=row_ok)
        tl.store(stats_ptr + 2 * n_rows + rows, a, mask=row_ok)
        tl.store(stats_ptr + 3 * n_rows + rows, xy, mask=row_ok)


@triton.jit
def _grad_kernel(
    logits_ptr, grad_ptr, labels_ptr, max_ptr, log_sum_ptr, entropy_ptr, g_logprob_ptr, g_entropy_ptr,
    n_rows, rows_inner, stride_outer, stride_inner, grad_row_stride,
    n_cols, n_cols_total, col_offset, temperature, ignore_index,
    HAS_G_LOGPROB: tl.constexpr, HAS_G_ENTROPY: tl.constexpr, SCALE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """d logits over columns [0, n_cols_total); columns >= n_cols (padded vocab) get 0.

    grad_ptr may alias logits_ptr (same layout): each element is read before it is overwritten,
    by the same program.
    """
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < n_rows
    row_ptrs = logits_ptr + _row_offsets(rows, rows_inner, stride_outer, stride_inner)
    grad_row_ptrs = grad_ptr + rows.to(tl.int64) * grad_row_stride

    m = tl.load(max_ptr + rows, mask=row_ok, other=0.0)
    log_s = tl.load(log_sum_ptr + rows, mask=row_ok, other=0.0)
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index)
    label_col = labels - col_offset
    if HAS_G_LOGPROB:
        # an ignored label's logprob is the constant 0: no gradient
        g_lp = tl.load(g_logprob_ptr + rows, mask=row_ok, other=0.0)
        g_lp = tl.where(labels == ignore_index, 0.0, g_lp)
    if HAS_G_ENTROPY:
        g_ent = tl.load(g_entropy_ptr + rows, mask=row_ok, other=0.0)
        ent = tl.load(entropy_ptr + rows, mask=row_ok, other=0.0)

    cols = tl.arange(0, BLOCK_V)
    for start in range(0, n_cols_total, BLOCK_V):
        c = start + cols
        x = tl.load(row_ptrs[:, None] + c[None, :], mask=row_ok[:, None] & (c < n_cols)[None, :],
                    other=_NEG_INF).to(tl.float32)
        if SCALE:
            x = x / temperature
        log_p = (x - m[:, None]) - log_s[:, None]
        p = tl.exp(log_p)
        grad = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
        if HAS_G_LOGPROB:
            # fp32 (1 - p) at the label, cast once below: p_label ~ 1 must not round in bf16
            grad += g_lp[:, None] * tl.where(c[None, :] == label_col[:, None], 1.0 - p, -p)
        if HAS_G_ENTROPY:
            # dH/dx_j = -p_j (log p_j + H); at -inf columns p == 0 and the term is 0, not 0 * -inf
            grad -= g_ent[:, None] * (p * tl.where(p > 0, log_p + ent[:, None], 0.0))
        if SCALE:
            grad = grad / temperature
        tl.store(grad_row_ptrs[:, None] + c[None, :], grad.to(grad_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (c < n_cols_total)[None, :])


# ----------------------------------------------------------------------------------------------
# Launch configuration. On a GPU the block width and warps are autotuned per vocab width (one
# row per program: 151936 columns keep a program busy); the interpreter cannot autotune and runs
# programs one after another, so it gets wide blocks of several rows (tests stay fast).

_GPU_CONFIGS = [(1024, 4), (2048, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 8), (8192, 16)]
_block_override: dict = {}


@contextlib.contextmanager
def block_sizes(block_v: Optional[int] = None, block_t: Optional[int] = None, num_warps: Optional[int] = None):
    """Force the launch configuration (tests: ragged last tiles; benchmarks). Powers of two."""
    saved = dict(_block_override)
    _block_override.update({k: v for k, v in (("BLOCK_V", block_v), ("BLOCK_T", block_t),
                                              ("num_warps", num_warps)) if v is not None})
    try:
        yield
    finally:
        _block_override.clear()
        _block_override.update(saved)


def _prune_configs(configs, named_args, **kwargs):
    width = named_args.get("n_cols_total", named_args.get("n_cols"))
    limit = max(1024, triton.next_power_of_2(max(int(width), 1)))
    return [c for c in configs if c.kwargs["BLOCK_V"] <= limit]


def _autotuned(kernel, width_arg: str, restore: str):
    configs = [triton.Config({"BLOCK_T": 1, "BLOCK_V": bv}, num_warps=w) for bv, w in _GPU_CONFIGS]
    # restore_value: the tuner runs the kernel several times on the same buffers, and both
    # kernels may update them in place (accumulated stats; gradients written over the logits).
    return triton.autotune(configs, key=[width_arg], restore_value=[restore],
                           prune_configs_by={"early_config_prune": _prune_configs})(kernel)


if not INTERPRETED:
    _stats_kernel_tuned = _autotuned(_stats_kernel, "n_cols", "stats_ptr")
    _grad_kernel_tuned = _autotuned(_grad_kernel, "n_cols_total", "grad_ptr")


def _launch(kernel, tuned_name: str, width: int, n_rows: int, args: list, flags: dict):
    if n_rows == 0:
        return
    if not INTERPRETED and not _block_override:
        tuned = globals()[tuned_name]
        tuned[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_T"]),)](*args, **flags)
        return
    if INTERPRETED:
        block_v = min(1024, max(16, triton.next_power_of_2(max(width, 1))))
        block_t = 16
    else:
        block_v, block_t = min(4096, max(128, triton.next_power_of_2(max(width, 1)))), 1
    block_v = _block_override.get("BLOCK_V", block_v)
    block_t = _block_override.get("BLOCK_T", block_t)
    num_warps = _block_override.get("num_warps", 4 if block_v <= 2048 else 8)
    kernel[(triton.cdiv(n_rows, block_t),)](*args, **flags, BLOCK_T=block_t, BLOCK_V=block_v,
                                             num_warps=num_warps)


# ----------------------------------------------------------------------------------------------
# Host side

class RowLayout:
    """How a [..., V] tensor's rows are addressed: row r at (r // rows_inner) * stride_outer +
    (r % rows_inner) * stride_inner. Covers contiguous tensors and 3-D views such as
    logits[:, :-1] without a copy; anything else is made contiguous."""

    def __init__(self, x: torch.Tensor):
        if x.dim() == 0:
            raise ValueError("logits must have a vocabulary dimension")
        if x.stride(-1) != 1:
            x = x.contiguous()
        n_cols = x.shape[-1]
        self.n_rows = x.numel() // n_cols if n_cols else 0
        for _ in range(2):
            try:
                flat = x.view(self.n_rows, n_cols)
                self.rows_inner, self.stride_outer, self.stride_inner = max(self.n_rows, 1), 0, flat.stride(0)
                break
            except RuntimeError:
                if x.dim() == 3:
                    self.rows_inner, self.stride_outer, self.stride_inner = max(x.shape[1], 1), x.stride(0), x.stride(1)
                    break
                x = x.contiguous()
        self.tensor = x

    def args(self) -> list:
        return [self.n_rows, self.rows_inner, self.stride_outer, self.stride_inner]


def launch_stats(layout: RowLayout, labels: torch.Tensor, *, n_cols: int, col_offset: int,
                 temperature: float, ignore_index: int, stats: Optional[torch.Tensor] = None,
                 accumulate: bool = False, finalize: bool = True):
    """Run the forward pass over one [rows, n_cols] slice.

    finalize=True returns (logprob, entropy, max, log_sum) [rows] fp32; otherwise the raw
    [4, rows] stats (m, s, a, x_label) are written to/updated in `stats` and returned.
    """
    x, n = layout.tensor, layout.n_rows
    out = torch.empty(4, n, dtype=torch.float32, device=x.device) if finalize else None
    if stats is None:
        stats = torch.empty(4, n, dtype=torch.float32, device=x.device)
    out_ptrs = list(out) if finalize else [stats] * 4  # unused pointers: any valid tensor
    args = [x, labels, stats, *out_ptrs, *layout.args(), n_cols, col_offset, float(temperature), ignore_index]
    flags = dict(ACCUMULATE=accumulate, FINALIZE=finalize, SCALE=temperature != 1.0)
    _launch(_stats_kernel, "_stats_kernel_tuned", n_cols, n, args, flags)
    return tuple(out) if finalize else stats


def launch_grad(layout: RowLayout, labels: torch.Tensor, max_: torch.Tensor, log_sum: torch.Tensor,
                entropy: torch.Tensor, g_logprob: Optional[torch.Tensor], g_entropy: Optional[torch.Tensor], *,
                n_cols: int, col_offset: int, temperature: float, ignore_index: int,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """d logits for one [rows, V] slice, in the logits' dtype. `out` ([rows, V] contiguous) may be
    the logits tensor itself, to write the gradient over it."""
    x, n = layout.tensor, layout.n_rows
    n_cols_total = x.shape[-1]
    if out is None:
        out = torch.empty((n, n_cols_total), dtype=x.dtype, device=x.device)
    assert out.is_contiguous() and out.shape == (n, n_cols_total)
    unused = max_  # pointer passed for an absent upstream gradient; never read
    args = [x, out, labels, max_, log_sum, entropy,
            unused if g_logprob is None else g_logprob, unused if g_entropy is None else g_entropy,
            *layout.args(), out.stride(0), min(n_cols, n_cols_total), n_cols_total, col_offset,
            float(temperature), ignore_index]
    flags = dict(HAS_G_LOGPROB=g_logprob is not None, HAS_G_ENTROPY=g_entropy is not None,
                 SCALE=temperature != 1.0)
    _launch(_grad_kernel, "_grad_kernel_tuned", n_cols_total, n, args, flags)
    return out


# ----------------------------------------------------------------------------------------------
# Autograd

class _LogprobsAndEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, temperature, ignore_index, vocab_size, tp_group):
        layout = RowLayout(logits)
        flat_labels = labels.reshape(-1).contiguous()
        if flat_labels.numel() != layout.n_rows:
            raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
        start, n_valid, world = local_vocab(logits.shape[-1], tp_group, vocab_size)
        common = dict(n_cols=n_valid, col_offset=start, temperature=temperature, ignore_index=ignore_index)
        if world == 1:
            logprob, entropy, max_, log_sum = launch_stats(layout, flat_labels, finalize=True, **common)
        else:
            stats = launch_stats(layout, flat_labels, finalize=False, **common)
            logprob, entropy, max_, log_sum = merge_stats_across_ranks(stats, flat_labels, ignore_index, tp_group,
                                                                         n_local=logits.shape[-1])
        ctx.common, ctx.shape = common, logits.shape
        ctx.save_for_backward(layout.tensor, flat_labels, max_, log_sum, entropy)
        ctx.set_materialize_grads(False)
        return logprob.view(labels.shape), entropy.view(labels.shape)

    @staticmethod
    def backward(ctx, g_logprob, g_entropy):
        if g_logprob is None and g_entropy is None:
            return (None,) * 6
        logits, flat_labels, max_, log_sum, entropy = ctx.saved_tensors
        flat = lambda g: None if g is None else g.reshape(-1).float().contiguous()  # noqa: E731
        grad = launch_grad(RowLayout(logits), flat_labels, max_, log_sum, entropy, flat(g_logprob), flat(g_entropy),
                           **ctx.common)
        return grad.view(ctx.shape), None, None, None, None, None


def logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, *, tp_group=None, temperature: float = 1.0,
                         ignore_index: int = -100, vocab_size: Optional[int] = None):
    """Triton implementation; see megatron_rl.kernels.logprobs_and_entropy."""
    check_inputs(logits.shape[:-1], labels, temperature)
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the triton kernels take fp32/fp16/bf16 logits, got {logits.dtype}")
    return _LogprobsAndEntropy.apply(logits, labels.long(), float(temperature), int(ignore_index), vocab_size, tp_group)
