"""Process groups for training: torch.distributed + Megatron's parallel_state from a ParallelConfig.

NCCL on GPUs; gloo with the CPU shim (cpu_shim.py) where CUDA is absent. Works under torchrun (env
vars) and in a single process (world size 1, a local rendezvous).
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from ..config.schema import ParallelConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_parallel(parallel: ParallelConfig, seed: int = 1234) -> None:
    """Join the job's process group (if not yet joined) and build Megatron's TP/PP/VPP/CP/DP groups.

    Called once per process before any model is built. The seed goes to Megatron's RNG tracker,
    which gives tensor-parallel ranks different dropout/init streams where they must differ.
    """
    from megatron.core import parallel_state, tensor_parallel

    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        from . import cpu_shim

        cpu_shim.enable()
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # plain `python`: a world of one
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    world = dist.get_world_size()
    mp = parallel.tensor * parallel.pipeline * parallel.context
    if world % mp:
        raise ValueError(
            f"world size {world} is not divisible by tensor*pipeline*context = {mp}: "
            "launch a multiple of that many processes or change parallel.*"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(**model_parallel_sizes(parallel))
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_parallel() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """Where this rank's tensors live."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def model_parallel_sizes(parallel: ParallelConfig) -> dict:
    """The sizes `parallel_state.initialize_model_parallel` takes, from the config (also used by the
    dry run, which must build the same groups)."""
    vpp = parallel.virtual_pipeline if (parallel.virtual_pipeline or 1) > 1 else None
    return {"tensor_model_parallel_size": parallel.tensor, "pipeline_model_parallel_size": parallel.pipeline,
            "virtual_pipeline_model_parallel_size": vpp, "context_parallel_size": parallel.context}
