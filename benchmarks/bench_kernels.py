#!/usr/bin/env python
"""Benchmarks of megatron_rl.kernels against eager torch, torch.compile, Megatron-core and Liger.

    python benchmarks/bench_kernels.py            T in {4096, 16384}, V=151936, H=4096, bf16, TP=1
    python benchmarks/bench_kernels.py --quick    T=4096 only, shorter timing windows
    python benchmarks/bench_kernels.py --cpu-smoke  tiny shapes on CPU under the Triton interpreter:
                                                  exercises every code path, times nothing real,
                                                  writes nothing to benchmarks/results/

Reported per implementation: median ms of the forward and of forward+backward (triton's do_bench:
CUDA events, L2 flushed between runs), effective GB/s (the minimum traffic of the operation —
read the logits once forward; read them again and write d logits backward — over the time) and its
share of this device's measured device-to-device copy bandwidth, TFLOP/s of the lm_head
(2*T*H*V forward, 6*T*H*V forward+backward) and its share of the measured bf16 matmul rate, and
the peak extra memory (torch.cuda.max_memory_allocated over the call, minus the memory held
before it and the returned tensors). The targets of the kernels issue are printed beside them.
Results go to benchmarks/results/kernels-<device>.{md,json}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GiB = 2**30


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T=4096 only, shorter timing windows")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny shapes on CPU under TRITON_INTERPRET=1; no timing claims, nothing in results/")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where to write the .md/.json (default: benchmarks/results; a temp dir with --cpu-smoke)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Measurement

class Meter:
    """do_bench medians and peak-memory deltas on a GPU; one plain timed call on CPU (smoke)."""

    def __init__(self, torch, device, quick: bool):
        self.torch, self.device = torch, device
        self.gpu = device.type == "cuda"
        self.rep_ms = 50 if quick else 200

    def time_ms(self, fn) -> float:
        if self.gpu:
            import triton.testing
            return float(triton.testing.do_bench(fn, warmup=25, rep=self.rep_ms, return_mode="median"))
        fn()  # smoke: warm up once (interpreter rewriting, compile), then one timed call
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    def peak_extra_bytes(self, fn):
        """Peak allocation during fn() above what was held before, less the tensors it returns."""
        if not self.gpu:
            return None
        cuda = self.torch.cuda
        cuda.synchronize()
        cuda.empty_cache()
        before = cuda.memory_allocated()
        cuda.reset_peak_memory_stats()
        out = fn()
        cuda.synchronize()
        peak = cuda.max_memory_allocated() - before
        returned = sum(t.numel() * t.element_size() for t in _tensors(out))
        del out
        return max(0, peak - returned)


def _tensors(out):
    if hasattr(out, "numel"):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def measure_copy_bandwidth(torch, meter, device, nbytes):
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).fill_(1)
    dst = torch.empty_like(src)
    ms = meter.time_ms(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9  # read + write


def measure_matmul_rate(torch, meter, device, n):
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = meter.time_ms(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3) / 1e12


# ----------------------------------------------------------------------------------------------
# Implementations. Each returns (forward, backward-able outputs) closures over shared inputs.

def eager_logprobs_entropy(torch, logits, labels):
    """The unfused baseline: fp32 copy, log_softmax, gather, entropy."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    logprob = logp.gather(-1, labels[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logprob, entropy


def init_megatron_tp1(torch, device):
    """Megatron's vocab-parallel cross entropy needs an initialised TP group; make a world of one."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    if not dist.is_initialized():
        store_file = tempfile.NamedTemporaryFile(prefix="bench_kernels_store_", delete=False).name
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store_file}",
                                rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)


def logprob_impls(torch, device, notes):
    """name -> fn(logits, labels) returning (logprob or None, entropy or None) for the logits workload."""
    import megatron_rl.kernels as K
    impls = {
        "megatron_rl.kernels (triton)": lambda x, y: K.logprobs_and_entropy(x, y, backend="triton"),
        "torch eager": lambda x, y: eager_logprobs_entropy(torch, x, y),
    }
    # In the smoke run inductor's C++ compile would dominate: dynamo with the eager backend still
    # runs the torch.compile code path.
    compiled = torch.compile(lambda x, y: eager_logprobs_entropy(torch, x, y),
                             backend="inductor" if device.type == "cuda" else "eager", dynamic=False)
    impls["torch.compile"] = compiled
    try:
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
        from megatron_rl.algorithms.entropy import entropy_from_logits
        init_megatron_tp1(torch, device)

        def megatron(x, y):
            # [s, b, v] layout; returns -logprob. It needs its own fp32 copy; entropy is separate.
            nll = vocab_parallel_cross_entropy(x[:, None], y[:, None]).squeeze(1)
            return -nll, entropy_from_logits(x)
        impls["megatron-core vocab_parallel_cross_entropy + entropy"] = megatron
    except Exception as exc:  # noqa: BLE001 - any failure is reported, the rest still runs
        notes.append(f"megatron-core baseline skipped: {type(exc).__name__}: {exc}")
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
        liger_ce = LigerCrossEntropyLoss(reduction="none")

        def liger(x, y):
            out = liger_ce(x, y)
            out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "loss", out)
            return -out, None  # cross entropy only: Liger has no entropy output
        impls["liger-kernel cross entropy (no entropy)"] = liger
    except Exception as exc:  # noqa: BLE001
        notes.append(f"liger-kernel baselines skipped: {type(exc).__name__}: {exc}")
    return impls


def lm_head_impls(torch, device, notes):
    import megatron_rl.kernels as K
    impls = {
        "megatron_rl.kernels fused lm_head (triton)":
            lambda h, w, y: K.linear_logprobs_and_entropy(h, w, y, backend="triton"),
        "matmul + megatron_rl.kernels (triton)":
            lambda h, w, y: K.logprobs_and_entropy(h @ w.t(), y, backend="triton"),
        "matmul + torch eager": lambda h, w, y: eager_logprobs_entropy(torch, h @ w.t(), y),
    }
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        try:
            liger_flce = LigerFusedLinearCrossEntropyLoss(reduction="none")
        except TypeError:
            liger_flce = None
            notes.append("liger fused linear cross entropy skipped: this version has no reduction='none'")
        if liger_flce is not None:
            def liger(h, w, y):
                out = liger_flce(w, h, y)
                out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "loss", out)
                return -out, None
            impls["liger-kernel fused linear cross entropy (no entropy)"] = liger
    except Exception as exc:  # noqa: BLE001
        notes.append(f"liger-kernel lm_head baseline skipped: {type(exc).__name__}: {exc}")
    return impls


def policy_impls():
    import megatron_rl.kernels as K
    return {
        "clipped_policy_loss (triton, fused)": lambda x, y, **kw: K.clipped_policy_loss(x, y, backend="triton", **kw),
        "reference logprobs + policy_loss": lambda x, y, **kw: K.clipped_policy_loss(x, y, backend="reference", **kw),
    }


def _grad_closure(torch, fn, inputs, upstream):
    """fn() -> outputs (some None); returns a closure running forward + backward via autograd.grad."""
    def run():
        outs = fn()
        pairs = [(o, g) for o, g in zip(outs, upstream) if o is not None]
        return torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs])
    return run


# ----------------------------------------------------------------------------------------------

def run(args) -> int:
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import warnings
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    import torch
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: benchmarks need a GPU (use --cpu-smoke to check the script on CPU)")
        return 1
    import triton

    device = torch.device("cuda" if not args.cpu_smoke else "cpu")
    meter = Meter(torch, device, args.quick)
    if args.cpu_smoke:
        shapes, vocab, hidden_size = [64], 1000, 64
        copy_bytes, matmul_n = 2**20, 128
    else:
        shapes, vocab, hidden_size = ([4096] if args.quick else [4096, 16384]), 151936, 4096
        copy_bytes, matmul_n = 4 * GiB, 8192
    dtype = torch.bfloat16
    notes = []

    copy_gbps = measure_copy_bandwidth(torch, meter, device, copy_bytes)
    matmul_tflops = measure_matmul_rate(torch, meter, device, matmul_n)
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s; bf16 matmul ({matmul_n}^3): {matmul_tflops:.0f} TFLOP/s")

    rows = []

    def record(workload, n_tokens, impl, fwd, fwd_bwd, bytes_fwd, bytes_fwd_bwd, flops_fwd=None, flops_fwd_bwd=None):
        row = dict(workload=workload, T=n_tokens, impl=impl)
        for tag, (timer, mem), nbytes, flops in (("fwd", fwd, bytes_fwd, flops_fwd),
                                                 ("fwd_bwd", fwd_bwd, bytes_fwd_bwd, flops_fwd_bwd)):
            try:
                ms = meter.time_ms(timer)
                peak = meter.peak_extra_bytes(mem)
            except torch.cuda.OutOfMemoryError:
                row[f"{tag}_ms"] = None
                row[f"{tag}_note"] = "OOM"
                torch.cuda.empty_cache()
                continue
            row[f"{tag}_ms"] = ms
            row[f"{tag}_GBps"] = nbytes / (ms * 1e-3) / 1e9
            row[f"{tag}_pct_copy_bw"] = 100 * row[f"{tag}_GBps"] / copy_gbps
            if flops is not None:
                row[f"{tag}_TFLOPs"] = flops / (ms * 1e-3) / 1e12
                row[f"{tag}_pct_matmul"] = 100 * row[f"{tag}_TFLOPs"] / matmul_tflops
            row[f"{tag}_peak_extra_GiB"] = None if peak is None else peak / GiB
        rows.append(row)
        print(_row_line(row), flush=True)

    for n_tokens in shapes:
        gen = torch.Generator(device=device).manual_seed(n_tokens)
        labels = torch.randint(0, vocab, (n_tokens,), device=device, generator=gen)
        g_lp = torch.randn(n_tokens, device=device, generator=gen)
        g_ent = torch.randn(n_tokens, device=device, generator=gen)
        logits_bytes = n_tokens * vocab * 2

        # 1. logprob + entropy over materialised bf16 logits
        logits = (torch.randn(n_tokens, vocab, device=device, generator=gen) * 3).to(dtype).requires_grad_(True)
        for name, impl in logprob_impls(torch, device, notes).items():
            x = logits.detach().clone().requires_grad_(True) if "liger" in name else logits  # liger writes in place
            fwd = lambda impl=impl, x=x: impl(x, labels)  # noqa: E731
            both = _grad_closure(torch, fwd, [x], [g_lp, g_ent])
            record("logprob+entropy", n_tokens, name, (fwd, fwd), (both, both), logits_bytes, 3 * logits_bytes)
            del x
        del logits

        # 2. the fused lm_head
        hidden = (torch.randn(n_tokens, hidden_size, device=device, generator=gen)).to(dtype).requires_grad_(True)
        weight = (torch.randn(vocab, hidden_size, device=device, generator=gen) * hidden_size**-0.5).to(dtype)
        weight.requires_grad_(True)
        flops = 2 * n_tokens * hidden_size * vocab
        for name, impl in lm_head_impls(torch, device, notes).items():
            fwd = lambda impl=impl: impl(hidden, weight, labels)  # noqa: E731
            both = _grad_closure(torch, fwd, [hidden, weight], [g_lp, g_ent])
            record("fused lm_head", n_tokens, name, (fwd, fwd), (both, both), logits_bytes, 3 * logits_bytes,
                   flops, 3 * flops)
        del hidden, weight

        # 3. the clipped policy loss on [B, L, V] logits (B * L = T)
        batch, length = n_tokens // 64 if n_tokens >= 64 else 1, min(64, n_tokens)
        logits = (torch.randn(batch, length, vocab, device=device, generator=gen) * 3).to(dtype).requires_grad_(True)
        targets = labels[: batch * length].view(batch, length)
        with torch.no_grad():
            lp, _ = eager_logprobs_entropy(torch, logits.view(-1, vocab), targets.reshape(-1))
        kwargs = dict(old_logprob=(lp.view(batch, length) + 0.1 * torch.randn(batch, length, device=device,
                                                                               generator=gen)),
                      advantages=torch.randn(batch, length, device=device, generator=gen),
                      response_mask=torch.ones(batch, length, device=device), dual_clip=3.0, entropy_coef=0.001)
        for name, impl in policy_impls().items():
            fwd = lambda impl=impl: impl(logits, targets, **kwargs)  # noqa: E731

            def both(fwd=fwd):
                loss, _ = fwd()
                return torch.autograd.grad(loss, [logits])
            record("clipped policy loss", n_tokens, name, (fwd, fwd), (both, both), logits_bytes, 3 * logits_bytes)
        del logits

    targets = evaluate_targets(rows, shapes, smoke=args.cpu_smoke)
    for line in targets:
        print(line)
    info = dict(
        device=torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'unknown'}), "
                                                                           "triton interpreter - timings meaningless",
        torch=torch.__version__, triton=triton.__version__, megatron_core=_version("megatron-core"),
        liger_kernel=_version("liger-kernel"), command="python " + " ".join(shlex.quote(a) for a in sys.argv),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        shapes=dict(T=shapes, V=vocab, H=hidden_size, dtype="bf16", tp=1),
        copy_bandwidth_GBps=copy_gbps, bf16_matmul_TFLOPs=matmul_tflops, matmul_shape=[matmul_n] * 3,
        smoke=bool(args.cpu_smoke), rows=rows, targets=targets, notes=sorted(set(notes)),
    )
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="bench_kernels_smoke_")) if args.cpu_smoke else RESULTS_DIR)
    if args.cpu_smoke and out_dir.resolve() == RESULTS_DIR.resolve():
        print("--cpu-smoke does not write to benchmarks/results/ (its timings mean nothing)")
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "cpu-smoke" if args.cpu_smoke else re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-")
    (out_dir / f"kernels-{slug}.json").write_text(json.dumps(info, indent=2) + "\n")
    (out_dir / f"kernels-{slug}.md").write_text(markdown(info))
    print(f"wrote {out_dir / f'kernels-{slug}.md'} and .json")
    return 0


def _version(dist_name):
    from importlib import metadata
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _row_line(row):
    return (f"{row['workload']:<20} T={row['T']:<6} {row['impl']:<55} fwd {_fmt(row.get('fwd_ms'), 3):>9} ms  "
            f"fwd+bwd {_fmt(row.get('fwd_bwd_ms'), 3):>9} ms")


def _find(rows, workload, n_tokens, prefix):
    for row in rows:
        if row["workload"] == workload and row["T"] == n_tokens and row["impl"].startswith(prefix):
            return row
    return None


def evaluate_targets(rows, shapes, smoke=False):
    """The issue's targets, evaluated on this run: 'PASS'/'FAIL' with the numbers, or 'n/a'."""
    lines = []

    def check(label, ok, detail):
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        if smoke:
            verdict = "not evaluated: CPU smoke"
        lines.append(f"[{verdict}] {label}: {detail}")

    for n in shapes:
        ours = _find(rows, "logprob+entropy", n, "megatron_rl")
        eager = _find(rows, "logprob+entropy", n, "torch eager")
        compiled = _find(rows, "logprob+entropy", n, "torch.compile")
        pct = ours and ours.get("fwd_pct_copy_bw")
        check(f"T={n} logprob+entropy forward >= 85% of copy bandwidth", None if pct is None else pct >= 85,
              f"{_fmt(pct, 1)}%")
        for base, factor in ((eager, 3.0), (compiled, 1.5)):
            if base is None or ours is None or not base.get("fwd_bwd_ms") or not ours.get("fwd_bwd_ms"):
                check(f"T={n} fwd+bwd >= {factor}x {base and base['impl']}", None, "missing")
                continue
            speedup = base["fwd_bwd_ms"] / ours["fwd_bwd_ms"]
            check(f"T={n} logprob+entropy fwd+bwd >= {factor}x {base['impl']}", speedup >= factor, f"{speedup:.2f}x")
        fused = _find(rows, "fused lm_head", n, "megatron_rl.kernels fused")
        pct = fused and fused.get("fwd_pct_matmul")
        check(f"T={n} fused lm_head forward >= 60% of bf16 matmul rate", None if pct is None else pct >= 60,
              f"{_fmt(pct, 1)}%")
        if n == 16384 or n == max(shapes):
            peak = fused and fused.get("fwd_bwd_peak_extra_GiB")
            check(f"T={n} fused lm_head peak extra memory < 1 GiB (fwd+bwd, beyond the gradients)",
                  None if peak is None else peak < 1.0, f"{_fmt(peak, 3)} GiB")
        fused_pl = _find(rows, "clipped policy loss", n, "clipped_policy_loss")
        ref_pl = _find(rows, "clipped policy loss", n, "reference")
        if fused_pl and ref_pl and fused_pl.get("fwd_bwd_ms") and ref_pl.get("fwd_bwd_ms"):
            check(f"T={n} policy loss fused faster than reference + separate loss",
                  fused_pl["fwd_bwd_ms"] < ref_pl["fwd_bwd_ms"],
                  f"{fused_pl['fwd_bwd_ms']:.3f} vs {ref_pl['fwd_bwd_ms']:.3f} ms")
    return lines


def markdown(info) -> str:
    out = [f"# megatron_rl.kernels benchmarks — {info['device']}", ""]
    if info["smoke"]:
        out += ["**CPU smoke run under the Triton interpreter: the numbers below are not performance "
                "measurements.**", ""]
    out += [f"- command: `{info['command']}`", f"- date: {info['date']}",
            f"- torch {info['torch']}, triton {info['triton']}, megatron-core {info['megatron_core']}, "
            f"liger-kernel {info['liger_kernel'] or 'not installed'}",
            f"- shapes: T in {info['shapes']['T']}, V={info['shapes']['V']}, H={info['shapes']['H']}, bf16, TP=1",
            f"- measured device-to-device copy bandwidth: {info['copy_bandwidth_GBps']:.0f} GB/s; "
            f"bf16 matmul {'x'.join(map(str, info['matmul_shape']))}: {info['bf16_matmul_TFLOPs']:.1f} TFLOP/s",
            "- ms: median (do_bench, L2 flushed); GB/s: minimum traffic (logits read once forward; read again "
            "and d logits written backward) / time; TFLOP/s: 2THV forward, 6THV forward+backward; "
            "peak extra: max_memory_allocated delta minus the returned tensors", ""]
    for workload in dict.fromkeys(r["workload"] for r in info["rows"]):
        flops = workload == "fused lm_head"
        head = ["T", "implementation", "fwd ms", "fwd+bwd ms", "fwd GB/s", "fwd % copy BW", "fwd+bwd GB/s"]
        head += ["fwd TFLOP/s", "fwd % matmul", "fwd+bwd TFLOP/s"] if flops else []
        head += ["peak extra fwd GiB", "peak extra fwd+bwd GiB"]
        out += [f"## {workload}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in (r for r in info["rows"] if r["workload"] == workload):
            cells = [str(r["T"]), r["impl"], _fmt(r.get("fwd_ms"), 3) if r.get("fwd_ms") else r.get("fwd_note", "-"),
                     _fmt(r.get("fwd_bwd_ms"), 3) if r.get("fwd_bwd_ms") else r.get("fwd_bwd_note", "-"),
                     _fmt(r.get("fwd_GBps"), 0), _fmt(r.get("fwd_pct_copy_bw"), 1), _fmt(r.get("fwd_bwd_GBps"), 0)]
            if flops:
                cells += [_fmt(r.get("fwd_TFLOPs"), 1), _fmt(r.get("fwd_pct_matmul"), 1),
                          _fmt(r.get("fwd_bwd_TFLOPs"), 1)]
            cells += [_fmt(r.get("fwd_peak_extra_GiB"), 3), _fmt(r.get("fwd_bwd_peak_extra_GiB"), 3)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Targets (kernels issue)", ""] + [f"- {line}" for line in info["targets"]] + [""]
    if info["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in info["notes"]] + [""]
    return "\n".join(out)


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
