"""The SGLang rollout engine: the RolloutEngine protocol over SGLang servers that we launch (or
attach to) and talk to over HTTP.

- generate: through sglang-router when there is one, otherwise groups spread over the servers by
  the client; each prompt's n samples come back adjacent with `prompt_index` and `weight_version`.
- update_weights: full HF-named tensors to every server (the router does not forward weight
  updates) with the colocated tensor transport (`weight_sync.tensor`); the trainer normally calls a
  transport's `sync(actor, version)` instead, which streams the actor's buckets.
- release_memory / resume_memory: SGLang's memory saver (colocated placement).

The HTTP client, the launcher and the transports are imported when an engine is built, so
`megatron_rl.rollout` imports without httpx or sglang installed.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

import torch

from .types import RolloutBatch, Sample, SamplingParams


class SGLangEngine:
    def __init__(self, cfg, model_path: Optional[str] = None, *, log_dir: str = "outputs/sglang",
                 host: str = "127.0.0.1", gpu_offset: int = 0, seed: Optional[int] = None,
                 extra_args: Sequence[str] = (), router: Optional[bool] = None, router_url: Optional[str] = None,
                 bucket_bytes: int = 512 << 20, client_kwargs: Optional[dict] = None, launcher=None):
        """`cfg`: an SGLangConfig. With `cfg.urls`, attach to those running servers (and `router_url`
        if given); otherwise launch `cfg.num_servers` servers of `model_path` (and a router, see
        SGLangServers.launch). `launcher` replaces `python -m sglang.launch_server` (tests)."""
        from .sglang_client import SGLangClient
        from .sglang_launch import SERVER_LAUNCHER, SGLangServers

        if cfg.urls:
            self.servers = SGLangServers.attach(cfg.urls, router_url=router_url, health_timeout_s=cfg.health_timeout_s)
        else:
            if not model_path:
                raise ValueError("launching SGLang servers needs the model path (an HF checkpoint directory); "
                                 "or set rollout.sglang.urls to attach to running servers")
            self.servers = SGLangServers.launch(cfg, model_path, log_dir=log_dir, host=host, gpu_offset=gpu_offset,
                                                seed=seed, extra_args=extra_args, router=router,
                                                launcher=launcher or SERVER_LAUNCHER)
        try:
            self.client = SGLangClient(self.servers.server_urls, generate_url=self.servers.generate_url,
                                       max_concurrency=cfg.max_concurrency, default_tp_size=cfg.tp_size,
                                       **(client_kwargs or {}))
        except BaseException:
            self.servers.shutdown()
            raise
        self.bucket_bytes = bucket_bytes
        self.weight_version = 0

    @property
    def server_urls(self) -> list[str]:
        return self.servers.server_urls

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> RolloutBatch:
        return self.client.generate(prompts, params, n, weight_version=self.weight_version)

    def iter_groups(self, prompts: list[list[int]], params: SamplingParams, n: int = 1, *,
                    first_index: int = 0) -> Iterator[list[Sample]]:
        """Each prompt's n samples as soon as they are all done (dynamic sampling); stop early to
        cancel the rest."""
        return self.client.iter_groups(prompts, params, n, weight_version=self.weight_version, first_index=first_index)

    # ------------------------------------------------------------------ weights and memory
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: Optional[int] = None) -> int:
        """Full HF-named tensors (any subset) to every server; same node (CUDA IPC / shared memory)."""
        from ..models.hf_io import bucketize
        from ..weight_sync.tensor import TensorWeightSync

        stats = TensorWeightSync(self, bucket_bytes=self.bucket_bytes).push(
            bucketize(named_tensors, self.bucket_bytes), version)
        return stats["tensors"]

    def release_memory(self, tags: Optional[Sequence[str]] = None) -> None:
        """Give the GPU to the trainer (weights, KV cache, CUDA graphs by default); the servers must
        be idle and launched with --enable-memory-saver (rollout.sglang.enable_memory_saver)."""
        self.client.release_memory_occupation(tags)

    def resume_memory(self, tags: Optional[Sequence[str]] = None) -> None:
        self.client.resume_memory_occupation(tags)

    def health(self) -> bool:
        return self.client.health()

    def shutdown(self) -> None:
        self.client.close()
        self.servers.shutdown()
