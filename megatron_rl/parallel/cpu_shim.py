"""Let the real megatron-core code run on CPU (gloo) for development and tests.

megatron-core hard-codes CUDA in a few places: the RNG tracker (`torch.cuda.get_rng_state`), the
pipeline schedules and p2p buffers (`device="cuda"`, `torch.cuda.current_device()`), DDP buffers,
and the optimizer / grad-clipping paths (`.cuda()`, `torch.cuda.FloatTensor` type checks). No
config flag avoids them, so on a machine without CUDA this module

* redirects every CUDA device request to the CPU with a `TorchFunctionMode` (factory functions,
  `.to(...)`, `.cuda()`), and
* points the handful of `torch.cuda` functions megatron calls (current_device, RNG state,
  synchronize, memory stats) at CPU equivalents: the "CUDA" RNG state is the CPU generator.

It is the only place the CPU backend lives. `enable()` refuses to run where CUDA is available, so
it can never change behaviour on GPUs.
"""
from __future__ import annotations

import logging
import threading

import torch
from torch.overrides import TorchFunctionMode

_lock = threading.Lock()
_mode: "_CudaToCpu | None" = None


def _is_cuda_device(device) -> bool:
    if device is None:
        return False
    if isinstance(device, int) and not isinstance(device, bool):  # a bare int means cuda:<int>; a bool is a flag
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


_TYPE_MAP = {
    "torch.cuda.FloatTensor": "torch.FloatTensor",
    "torch.cuda.HalfTensor": "torch.HalfTensor",
    "torch.cuda.BFloat16Tensor": "torch.BFloat16Tensor",
    "torch.cuda.DoubleTensor": "torch.DoubleTensor",
    "torch.cuda.LongTensor": "torch.LongTensor",
    "torch.cuda.IntTensor": "torch.IntTensor",
    "torch.cuda.ByteTensor": "torch.ByteTensor",
    "torch.cuda.BoolTensor": "torch.BoolTensor",
}
_CPU_TO_CUDA_TYPE = {v: k for k, v in _TYPE_MAP.items()}


class _CudaToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU and makes `.cuda()` a no-op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name == "cuda":  # Tensor.cuda / Module params: stay on CPU
            return args[0]
        if name == "type" and len(args) == 1 and not kwargs:
            # megatron asserts `param.grad.type() == 'torch.cuda.FloatTensor'`
            cpu_type = func(*args)
            return _CPU_TO_CUDA_TYPE.get(cpu_type, cpu_type)
        if name == "type" and len(args) >= 2 and isinstance(args[1], str):
            args = (args[0], _TYPE_MAP.get(args[1], args[1]), *args[2:])
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if name == "to":
            args = tuple("cpu" if (i > 0 and _is_cuda_device(a)) else a for i, a in enumerate(args))
        return func(*args, **kwargs)


class _CpuStream:
    """Stands in for torch.cuda.Stream: CPU work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def record_event(self, event=None):
        return event or _CpuEvent()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _CpuEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def wait(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.device_count = lambda: 1
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # not torch.manual_seed: it calls torch.cuda.manual_seed_all, which must stay torch's own
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.Stream = _CpuStream
    cuda.Event = _CpuEvent
    cuda.current_stream = lambda *a, **k: _CpuStream()
    cuda.default_stream = lambda *a, **k: _CpuStream()
    cuda.stream = lambda *a, **k: _CpuStream()
    cuda.nvtx.range_push = lambda *a, **k: None
    cuda.nvtx.range_pop = lambda *a, **k: None

    # megatron's RNG tracker reads and writes the CUDA generator through these two helpers.
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # A mode is switched off while its own handler runs, and torch.autograd.backward goes through
    # the handler; activation recomputation runs model code inside backward, so switch it back on.
    checkpoint_fn = mrandom.CheckpointFunction
    recompute_backward = checkpoint_fn.backward

    def backward_on_cpu(ctx, *grads):
        with _CudaToCpu():
            return recompute_backward(ctx, *grads)

    checkpoint_fn.backward = staticmethod(backward_on_cpu)

    # With one generator for "CPU" and "CUDA", any random op in a tracker fork changes the CPU
    # state, which megatron reports as a warning on every fork; it is expected here.
    logging.getLogger(mrandom.__name__).addFilter(
        lambda record: "CPU RNG state changed" not in record.getMessage()
    )


def enable() -> None:
    """Install the CPU backend for this process (idempotent). Refused where CUDA is available."""
    global _mode
    with _lock:
        if _mode is not None:
            return
        if torch.cuda.is_available():
            raise RuntimeError("megatron_rl.parallel.cpu_shim is for machines without CUDA")
        _patch_torch_cuda()
        _mode = _CudaToCpu()
        _mode.__enter__()
        _quiet_known_warnings()


def _quiet_known_warnings() -> None:
    """Warnings every CPU run prints and nobody can act on: GPU tuning advice from Megatron, the
    non-leaf .grad access of this shim's device mapping, torch's renames of the collectives
    Megatron calls."""
    import warnings

    warnings.filterwarnings("ignore", message=".*CUDA_DEVICE_MAX_CONNECTIONS.*")
    warnings.filterwarnings("ignore", message=r".*\.grad attribute of a Tensor that is not a leaf.*")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.distributed\..* is deprecated.*")
    warnings.filterwarnings("ignore", message="Apex is not installed.*")
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecating ShardedTensor.*")
    warnings.filterwarnings("ignore", category=FutureWarning, message="`load_state_dict` is deprecated.*")
    warnings.filterwarnings("ignore", message="full scope is deprecated.*")


def is_enabled() -> bool:
    return _mode is not None
