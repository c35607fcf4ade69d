"""STAND-IN, NOT SGLang's kernels: an import-time placeholder for `sgl_kernel`, SGLang's CPU kernel package.

Why it exists: SGLang's CPU kernel package is not on PyPI (every sgl-kernel / sglang-kernel wheel there is
a CUDA build; SGLang's own CPU route compiles it from source). With SGLANG_USE_CPU_ENGINE=1 the server
imports a handful of `*_cpu` names from `sgl_kernel` at start; on a CPU without AMX, with the
torch_native attention backend our launcher sets, it calls none of them.

What it does: any public name resolves to a function that, when called, writes one line with
CALL_MARKER to stderr (the server's log) and raises. So nothing of SGLang's computation is replaced: a
call would fail loudly, and the project's real-server tests assert that the server logs never show the
marker. It lives only in the isolated server environment made by launch/sglang_env.sh (a .pth line
puts launch/sglang_cpu on that environment's path), never in the project's.
"""
import sys

CALL_MARKER = "[megatron-rl sgl_kernel stand-in] called"
__version__ = "0.0.0+megatron-rl-cpu-standin"


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def not_available(*args, **kwargs):
        print(f"{CALL_MARKER} sgl_kernel.{name}: SGLang's CPU kernels are not installed here", file=sys.stderr,
              flush=True)
        raise NotImplementedError(f"sgl_kernel.{name}: this is megatron-rl's import stand-in for SGLang's CPU "
                                  "kernel package, which is not installed; nothing should call it on this path")

    not_available.__name__ = name
    return not_available
