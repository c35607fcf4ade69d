"""Compile the Triton kernels for an sm_90 (H100) target without a GPU and report register use and
spills: catches what the interpreter accepts but the compiler rejects (non-constexpr globals,
loop-carried type changes, ...). Run by test_kernels_compile.py in a process without
TRITON_INTERPRET; prints one JSON line per compiled variant."""
import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

assert not triton.knobs.runtime.interpret, "run without TRITON_INTERPRET"
from megatron_rl.kernels import logprob_entropy as le  # noqa: E402

ROW_ARGS = dict(n_rows="i32", rows_inner="i32", stride_outer="i64", stride_inner="i32")
STATS = dict(logits_ptr=None, labels_ptr="*i64", stats_ptr="*fp32", logprob_ptr="*fp32", entropy_ptr="*fp32",
             max_ptr="*fp32", log_sum_ptr="*fp32", **ROW_ARGS, n_cols="i32", col_offset="i32", temperature="fp32",
             ignore_index="i32")
GRAD = dict(logits_ptr=None, grad_ptr=None, labels_ptr="*i64", max_ptr="*fp32", log_sum_ptr="*fp32",
            entropy_ptr="*fp32", g_logprob_ptr="*fp32", g_entropy_ptr="*fp32", **ROW_ARGS, grad_row_stride="i32",
            n_cols="i32", n_cols_total="i32", col_offset="i32", temperature="fp32", ignore_index="i32")
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_variant(kernel, arg_types, dtype, constexprs, num_warps):
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = arg_types[name] or f"*{dtype}"
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    usage = {}
    if os.path.exists(CUOBJDUMP):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out)}
    return usage


def check_autotuner_wiring():
    """The GPU path wraps both kernels in triton.autotune (the interpreter cannot run it): check the
    wrappers exist and the config pruning works through the real Autotuner API."""
    from triton.runtime.autotuner import Autotuner
    for tuned, width_arg in ((le._stats_kernel_tuned, "n_cols"), (le._grad_kernel_tuned, "n_cols_total")):
        assert isinstance(tuned, Autotuner) and tuned.keys == [width_arg]
        assert set(tuned.restore_value) <= set(tuned.arg_names)
        for width in (300, 151936):
            tuned.nargs = {"n_cols": width, "n_cols_total": width}
            blocks = sorted({c.kwargs["BLOCK_V"] for c in tuned.prune_configs({})})
            print(json.dumps(dict(autotuner=width_arg, width=width, BLOCK_V=blocks)))


def main():
    check_autotuner_wiring()
    variants = []
    for block_v, warps in ((1024, 4), (8192, 8)):
        for flags in (dict(ACCUMULATE=False, FINALIZE=True, SCALE=True),
                      dict(ACCUMULATE=True, FINALIZE=False, SCALE=False)):
            variants.append(("stats", "bf16", flags, block_v, warps))
        for flags in (dict(HAS_G_LOGPROB=True, HAS_G_ENTROPY=True, SCALE=True),
                      dict(HAS_G_LOGPROB=True, HAS_G_ENTROPY=False, SCALE=False)):
            variants.append(("grad", "bf16", flags, block_v, warps))
    variants += [("stats", "fp32", dict(ACCUMULATE=False, FINALIZE=True, SCALE=False), 4096, 8),
                 ("grad", "fp16", dict(HAS_G_LOGPROB=False, HAS_G_ENTROPY=True, SCALE=False), 8192, 16)]
    for which, dtype, flags, block_v, warps in variants:
        kernel, types = (le._stats_kernel, STATS) if which == "stats" else (le._grad_kernel, GRAD)
        usage = compile_variant(kernel, types, dtype, dict(flags, BLOCK_T=1, BLOCK_V=block_v), warps)
        print(json.dumps(dict(kernel=which, dtype=dtype, flags=flags, BLOCK_V=block_v, num_warps=warps, **usage)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
