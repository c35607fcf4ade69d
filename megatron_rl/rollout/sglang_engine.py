"""The SGLang rollout engine: the RolloutEngine protocol over SGLang servers that we launch (or
attach to) and talk to over HTTP.

- generate: through sglang-router when there is one, otherwise groups spread over the servers by
  the client; each prompt's n samples come back adjacent with `prompt_index` and `weight_version`.
- weights reach the servers through a transport of weight_sync/ (tensor, nccl, disk: every
  server, since the router does not forward weight updates); rollout/ imports none of them.
- release_memory / resume_memory: SGLang's memory saver (colocated placement, GPU servers). A
  colocated engine checks at start that GPU servers have the memory saver (one line if not: calling
  release on such a server kills it); CPU servers have no device memory to hand back, so release
  and resume are skipped there (logged once).
- a launched server that dies or hangs during a rollout is restarted (`rollout.sglang.max_restarts`
  times per server) and the failed requests are sent again. Its weights after the restart are the
  checkpoint's (version 0): fine while the weights are still version 0; else it loads the current
  disk checkpoint when the disk transport wrote one, or it gets no more requests until the next
  weight sync (which updates every server) and the rollout finishes on the others. When no server
  with the current weights is left (or a router picks servers itself), the rollout fails with
  SGLangStaleWeightsError: sync and run it again. See docs/rollout.md.

The HTTP client, the launcher and the transports are imported when an engine is built, so
`megatron_rl.rollout` imports without httpx or sglang installed.
"""
from __future__ import annotations

import logging
import threading
from typing import Iterator, Optional, Sequence

from .types import RolloutBatch, Sample, SamplingParams

log = logging.getLogger(__name__)


class SGLangEngine:
    def __init__(self, cfg, model_path: Optional[str] = None, *, log_dir: Optional[str] = None,
                 seed: Optional[int] = None, output_dir: Optional[str] = None, bucket_bytes: int = 512 << 20,
                 client_kwargs: Optional[dict] = None, launcher=None, router_launcher=None,
                 env: Optional[dict] = None, colocated: bool = False, dtype: Optional[str] = None):
        """`cfg`: an SGLangConfig. With `cfg.urls`, attach to those running servers (and
        `cfg.router_url`); otherwise launch `cfg.num_servers` servers of `model_path` (and a router,
        see SGLangServers.launch) with their logs in `log_dir` (default `cfg.log_dir`, where
        `${run.output_dir}` becomes `output_dir`). `seed` overrides `cfg.seed`. `launcher` /
        `router_launcher` replace `python -m sglang.launch_server` / `sglang_router.launch_router`
        (tests); `client_kwargs` override the client's settings taken from `cfg`. `colocated`
        (rollout.placement colocated): the trainer releases the servers' memory between rollouts.
        `dtype`: the launched servers' --dtype (SGLang's name; the factory passes model.dtype's)."""
        from .sglang_client import SGLangClient
        from .sglang_launch import SGLangServers, expand_output_dir

        self.cfg = cfg
        self.log_dir: Optional[str] = None
        if cfg.urls:
            self.servers = SGLangServers.attach(cfg.urls, router_url=cfg.router_url,
                                                health_timeout_s=cfg.health_timeout_s)
        else:
            if not model_path:
                raise ValueError("launching SGLang servers needs the model path (an HF checkpoint directory); "
                                 "or set rollout.sglang.urls to attach to running servers")
            self.log_dir = log_dir or expand_output_dir(cfg.log_dir, output_dir, "rollout.sglang.log_dir")
            self.servers = SGLangServers.launch(cfg, model_path, log_dir=self.log_dir,
                                                seed=cfg.seed if seed is None else seed,
                                                launcher=launcher, router_launcher=router_launcher, env=env,
                                                dtype=dtype)
        # a server whose health probe gets no reply within this is hung (after its requests timed out)
        self.probe_timeout_s = min(30.0, cfg.request_timeout_s)
        self._weight_version = 0
        self.disk_weights: Optional[str] = None  # the disk transport's checkpoint of the current version
        self._stale: dict[str, str] = {}  # restarted servers with the checkpoint's weights -> why
        self._recover_lock = threading.Lock()
        self.released: set[str] = set()  # memory tags released on the servers (colocated placement)
        try:
            settings = dict(generate_url=self.servers.generate_url, max_concurrency=cfg.max_concurrency,
                            default_tp_size=cfg.tp_size, max_retries=cfg.max_retries,
                            request_timeout_s=cfg.request_timeout_s, recover=self._recover)
            self.client = SGLangClient(self.servers.server_urls, **{**settings, **(client_kwargs or {})})
            # memory to hand back between rollouts: GPU servers only, and they need the memory saver
            self.releases_memory = self._check_memory_saver(required=colocated)
        except BaseException:
            self.servers.shutdown()
            raise
        self.bucket_bytes = bucket_bytes

    def _check_memory_saver(self, required: bool) -> bool:
        """Whether the servers can release memory: False on CPU servers (logged when `required`, the
        colocated placement: no device memory to hand back). When `required`, a GPU server without
        --enable-memory-saver is a one-line error now, not a server killed by the first release."""
        from .sglang_launch import SGLangLaunchError

        infos = {url: self.client.server_info(url) for url in self.servers.server_urls}
        if all(str(info.get("device", "cuda")) == "cpu" for info in infos.values()):
            if required:
                log.info("sglang servers run on the CPU: no device memory to hand back, so the colocated run skips "
                         "release/resume of their memory (the tensor transport is still used)")
            return False
        missing = [url for url, info in infos.items() if not info.get("enable_memory_saver")]
        if missing and required:
            raise SGLangLaunchError(
                f"SGLang server {', '.join(missing)} runs without --enable-memory-saver, which colocated placement "
                "needs (releasing its memory would kill it): restart it with --enable-memory-saver "
                "(rollout.sglang.enable_memory_saver true when we launch it), or use rollout.placement=disaggregated")
        return not missing

    @classmethod
    def from_config(cls, rollout_cfg, model_path: Optional[str] = None, *, run_seed: Optional[int] = None,
                    output_dir: Optional[str] = None, **kwargs) -> "SGLangEngine":
        """From a RolloutConfig: `rollout.sglang` for the servers, `rollout.bucket_mb` for
        update_weights; the servers' seed is `rollout.sglang.seed`, else `run_seed` (run.seed);
        `output_dir` (run.output_dir) fills `${run.output_dir}` in paths of a config not built by
        the loader."""
        cfg = rollout_cfg.sglang
        seed = cfg.seed if cfg.seed is not None else run_seed
        return cls(cfg, model_path, seed=seed, output_dir=output_dir, bucket_bytes=rollout_cfg.bucket_mb << 20,
                   colocated=rollout_cfg.placement == "colocated", **kwargs)

    @property
    def server_urls(self) -> list[str]:
        return self.servers.server_urls

    # ------------------------------------------------------------------ the weights' version
    @property
    def weight_version(self) -> int:
        return self._weight_version

    @weight_version.setter
    def weight_version(self, version: int) -> None:
        """Set by a transport once every server has taken `version`: restarted servers are current
        again. The disk transport records its checkpoint (`disk_weights`) after setting it."""
        self._weight_version = version
        self.disk_weights = None
        self._stale.clear()
        self.client.aio.avoid = frozenset()

    @property
    def needs_weight_sync(self) -> bool:
        """A restarted server has the checkpoint's weights, not the current ones (the next sync fixes it)."""
        return bool(self._stale)

    @property
    def restart_count(self) -> int:
        """Server restarts so far (the NCCL transport forms its group again when this changes)."""
        return self.servers.restart_count

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> RolloutBatch:
        return self.client.generate(prompts, params, n, weight_version=self.weight_version)

    def iter_groups(self, prompts: list[list[int]], params: SamplingParams, n: int = 1, *,
                    first_index: int = 0) -> Iterator[list[Sample]]:
        """Each prompt's n samples as soon as they are all done (dynamic sampling); stop early to
        cancel the rest."""
        return self.client.iter_groups(prompts, params, n, weight_version=self.weight_version, first_index=first_index)

    # ------------------------------------------------------------------ dead or hung servers
    def _recover(self, url: str, error: Exception, since: float) -> Optional[str]:
        """The client's hook after a `/generate` to `url` failed for good (runs in a worker thread):
        restart what is dead or hung behind `url`, decide what the restarted servers' weights are
        worth, and return where to send the request again (None: any server /generate may use)."""
        from .sglang_client import SGLangError
        from .sglang_launch import SGLangLaunchError

        via_router = url == self.servers.router_url
        with self._recover_lock:
            if not via_router and self._weight_version != 0:
                # nothing new goes to it while it restarts: it comes back with the checkpoint's weights
                self.client.aio.avoid = frozenset({*self._stale, url})
            try:
                recovered, restarted = self.servers.recover(url, since, probe_timeout_s=self.probe_timeout_s)
                if not recovered:
                    raise error  # alive and healthy: the failure was not the process's
                for u in restarted:
                    if u != self.servers.router_url:
                        self._refresh(u)
            except SGLangLaunchError as e:
                raise SGLangError(f"{e} (the request had failed: {error})") from error
            finally:
                self.client.aio.avoid = frozenset(self._stale)
            if self._stale and (via_router or set(self._stale) >= set(self.servers.server_urls)):
                raise self._stale_error(via_router)
            return None if url in self._stale else url

    def _refresh(self, url: str) -> None:
        """A restarted server has the checkpoint's weights: right at version 0; the disk transport's
        checkpoint of the current version is loaded again; otherwise it is stale until the next sync."""
        version = self._weight_version
        if version == 0:
            return
        if self.disk_weights is not None:
            self.client.update_weights_from_disk(self.disk_weights, weight_version=version, urls=[url])
            log.warning("sglang server %s reloaded weight version %s from %s after its restart", url, version,
                        self.disk_weights)
            return
        self._stale[url] = f"restarted with the checkpoint's weights, not version {version}"
        log.warning("sglang server %s has the checkpoint's weights after its restart, not version %s: it gets no "
                    "/generate requests until the next weight sync", url, version)

    def _stale_error(self, via_router: bool):
        from .sglang_client import SGLangStaleWeightsError

        urls = ", ".join(self._stale)
        why = ("sglang-router may route any request to them" if via_router
               else "no server with the current weights is left")
        return SGLangStaleWeightsError(
            f"SGLang server {urls} was restarted and has the checkpoint's weights, not weight version "
            f"{self._weight_version} (those live only in the trainer), and {why}: sync the weights (every server "
            "gets them) and run the rollout again")

    # ------------------------------------------------------------------ weights and memory
    def release_memory(self, tags: Optional[Sequence[str]] = None) -> None:
        """Give the GPU to the trainer (weights, KV cache, CUDA graphs by default); the servers must
        be idle and launched with --enable-memory-saver (rollout.sglang.enable_memory_saver). Tags
        already released are skipped; `released` records what is."""
        from .sglang_client import MEMORY_TAGS

        if not self.releases_memory:
            return  # CPU servers (or no memory saver): nothing to hand back
        tags = [t for t in (MEMORY_TAGS if tags is None else tags) if t not in self.released]
        if tags:
            self.client.release_memory_occupation(tags)
            self.released |= set(tags)

    def resume_memory(self, tags: Optional[Sequence[str]] = None) -> None:
        """Take back what was released (all of it by default); only released tags are sent: 0.5.23's
        scheduler fails on resuming a tag that is not released."""
        from .sglang_client import MEMORY_TAGS

        tags = [t for t in (MEMORY_TAGS if tags is None else tags) if t in self.released]
        if tags:
            self.client.resume_memory_occupation(tags)
            self.released -= set(tags)

    def health(self) -> bool:
        return self.client.health()

    def shutdown(self) -> None:
        self.client.close()
        self.servers.shutdown()
