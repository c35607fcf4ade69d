"""The weight transport of a run, built from the config on every rank (its `sync(actor, version)`
is collective):

    sync = build_weight_sync(cfg.rollout, engine, output_dir=cfg.run.output_dir)

`rollout.weight_sync: auto` resolves by engine and placement (`config.checks.resolve_weight_sync`):
embedded -> in_process, sglang colocated -> tensor, sglang disaggregated -> nccl; disk only when
asked. A choice that cannot reach the engine is a ConfigError naming rollout.weight_sync and the fix
(the same rule `megatron-rl validate` runs).
"""
from __future__ import annotations

from typing import Optional

from ..config.checks import resolve_weight_sync, weight_sync_problem
from ..config.errors import ConfigError
from ..rollout.sglang_launch import expand_output_dir


def build_weight_sync(cfg_rollout, engine, *, output_dir: Optional[str] = None,
                      manage_memory: Optional[bool] = None, **transport_kwargs):
    """The transport `rollout.weight_sync` names (auto resolved), on every rank; `engine` is the
    rank-0 engine (None elsewhere). Buckets of `rollout.bucket_mb`.

    - in_process: `InProcessWeightSync(engine)` (collective constructor: every rank calls it).
    - tensor: `TensorWeightSync(engine, manage_memory=...)`; `manage_memory` defaults to colocated
      placement with `rollout.sglang.enable_memory_saver`: the weights the trainer's
      `engine.release_memory()` released are resumed before the update, the KV cache and CUDA graphs
      after it.
    - nccl: `NcclWeightSync(engine, master_address=rollout.sglang.nccl_master_address,
      master_port=rollout.sglang.nccl_port)`.
    - disk: `DiskWeightSync(engine, root=rollout.sglang.disk_root)` (`${run.output_dir}` ->
      `output_dir`), a path the servers must see too.
    `transport_kwargs` go to the transport's constructor."""
    problem = weight_sync_problem(cfg_rollout)
    if problem:
        raise ConfigError(problem)
    name = resolve_weight_sync(cfg_rollout)
    bucket_bytes = cfg_rollout.bucket_mb << 20
    s = cfg_rollout.sglang
    if name == "in_process":
        from .in_process import InProcessWeightSync

        return InProcessWeightSync(engine, bucket_bytes=bucket_bytes, **transport_kwargs)
    if name == "tensor":
        from .tensor import TensorWeightSync

        if manage_memory is None:
            manage_memory = cfg_rollout.placement == "colocated" and s.enable_memory_saver
        return TensorWeightSync(engine, bucket_bytes=bucket_bytes, manage_memory=manage_memory, **transport_kwargs)
    if name == "nccl":
        from .nccl import NcclWeightSync

        return NcclWeightSync(engine, master_address=s.nccl_master_address, master_port=s.nccl_port,
                              bucket_bytes=bucket_bytes, **transport_kwargs)
    if name == "disk":
        from .disk import DiskWeightSync

        return DiskWeightSync(engine, expand_output_dir(s.disk_root, output_dir, "rollout.sglang.disk_root"),
                              **transport_kwargs)
    raise ConfigError(f"rollout.weight_sync {name!r} is not one of auto, in_process, tensor, nccl, disk")
