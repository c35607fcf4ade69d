"""The rollout engine, built from the config.

    engine = build_rollout_engine(cfg.rollout, cfg.model, rank=dist.get_rank(), hf_path=cfg.model.hf_path,
                                  seed=cfg.run.seed, output_dir=cfg.run.output_dir, decode=tokenizer.decode)

The engine lives on global rank 0 (every other rank gets None). Its weight transport is built by
`weight_sync.factory.build_weight_sync` (rollout/ imports no transport).
"""
from __future__ import annotations

from typing import Callable, Optional

from ..config.errors import ConfigError


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
