"""The rollout engine and its weight transport, built from the config.

    engine = build_rollout_engine(cfg.rollout, cfg.model, rank=dist.get_rank(), hf_path=cfg.model.hf_path,
                                  seed=cfg.run.seed, output_dir=cfg.run.output_dir, decode=tokenizer.decode)
    sync = build_weight_sync(cfg.rollout, engine, output_dir=cfg.run.output_dir)   # every rank

The engine lives on global rank 0 (every other rank gets None); the transport is built on every
rank (its `sync(actor, version)` is collective). `rollout.weight_sync: auto` resolves by engine and
placement (`config.checks.resolve_weight_sync`): embedded -> in_process, sglang colocated -> tensor,
sglang disaggregated -> nccl; disk only when asked. A choice that cannot reach the engine is a
ConfigError naming rollout.weight_sync and the fix (the same rule `megatron-rl validate` runs).
"""
from __future__ import annotations

from typing import Callable, Optional

from ..config.checks import resolve_weight_sync, weight_sync_problem
from ..config.errors import ConfigError
from .sglang_launch import expand_output_dir


def build_rollout_engine(cfg_rollout, model_cfg, *, rank: int, hf_path: Optional[str] = None, seed: int = 0,
                         output_dir: Optional[str] = None, decode: Optional[Callable[[list[int]], str]] = None,
                         pad_token_id: int = 0, **engine_kwargs):
    """The engine of `cfg_rollout.engine` (a RolloutConfig) on global rank 0, None elsewhere.

    embedded: `EmbeddedEngine(model_cfg, hf_path, decode, pad_token_id, seed)`, weights from
    `hf_path` (random until the first sync without it). sglang: `SGLangEngine.from_config`: servers
    launched from `hf_path` (default `model_cfg.hf_path`) or attached to (`rollout.sglang.urls`),
    seeded with `rollout.sglang.seed` or `seed` (run.seed), logs and paths under `output_dir`
    (run.output_dir) where the config says `${run.output_dir}`. `engine_kwargs` go to the engine's
    constructor (tests: `launcher=`, `client_kwargs=`, `device=`)."""
    if rank != 0:
        return None
    hf_path = hf_path or getattr(model_cfg, "hf_path", None)
    if cfg_rollout.engine == "embedded":
        if cfg_rollout.placement != "colocated":
            raise ConfigError("rollout.placement 'disaggregated' needs rollout.engine=sglang: the embedded engine "
                              "runs inside the training processes (set placement=colocated or engine=sglang)")
        from .embedded import EmbeddedEngine

        return EmbeddedEngine(model_cfg, hf_path=hf_path, decode=decode, pad_token_id=pad_token_id, seed=seed,
                              **engine_kwargs)
    if cfg_rollout.engine == "sglang":
        if not cfg_rollout.sglang.urls and not hf_path:
            raise ConfigError("rollout.engine 'sglang' launches its servers from model.hf_path (an HF checkpoint "
                              "with its tokenizer), which is not set: set model.hf_path, or attach to running "
                              "servers with rollout.sglang.urls")
        from .sglang_engine import SGLangEngine
        from .sglang_launch import SGLANG_DTYPES

        engine_kwargs.setdefault("dtype", SGLANG_DTYPES.get(getattr(model_cfg, "dtype", None)))
        return SGLangEngine.from_config(cfg_rollout, hf_path, run_seed=seed, output_dir=output_dir, **engine_kwargs)
    raise ConfigError(f"rollout.engine {cfg_rollout.engine!r} is not one of embedded, sglang")


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
        from ..weight_sync.in_process import InProcessWeightSync

        return InProcessWeightSync(engine, bucket_bytes=bucket_bytes, **transport_kwargs)
    if name == "tensor":
        from ..weight_sync.tensor import TensorWeightSync

        if manage_memory is None:
            manage_memory = cfg_rollout.placement == "colocated" and s.enable_memory_saver
        return TensorWeightSync(engine, bucket_bytes=bucket_bytes, manage_memory=manage_memory, **transport_kwargs)
    if name == "nccl":
        from ..weight_sync.nccl import NcclWeightSync

        return NcclWeightSync(engine, master_address=s.nccl_master_address, master_port=s.nccl_port,
                              bucket_bytes=bucket_bytes, **transport_kwargs)
    if name == "disk":
        from ..weight_sync.disk import DiskWeightSync

        return DiskWeightSync(engine, expand_output_dir(s.disk_root, output_dir, "rollout.sglang.disk_root"),
                              **transport_kwargs)
    raise ConfigError(f"rollout.weight_sync {name!r} is not one of auto, in_process, tensor, nccl, disk")
