"""Colocated weight sync to SGLang servers on the same node: `/update_weights_from_tensor` with
CUDA-IPC handles (CPU tensors travel through shared memory the same way).

Per bucket of full HF-named tensors (`models.hf_io.iter_hf_buckets`): the tensors of each dtype are
flattened into one byte buffer (`FlattenedTensorBucket`, `load_format="flattened_bucket"`: one IPC
handle per buffer instead of one per tensor), and serialised with `MultiprocessingSerializer`
once per TP rank of each server: every rank opens its own handle, and a handle can be opened only
once (CUDA-IPC refcounts; a CPU payload's file descriptor is handed out once). The buffers stay
referenced until the server has replied: SGLang reads them in place. One bucket is in flight while
the next is gathered and flattened, so at most two buckets are alive.

Around the whole update, on every server: pause -> flush -> begin_weight_update (0.5.21+) ...
end_weight_update -> continue. With `manage_memory` (colocated placement, servers released during
training) the weights are resumed before the update and the KV cache / CUDA graphs after it, so the
KV cache is never allocated while the trainer's buckets are.

Every transport has the same face: `push(buckets, version) -> stats` in one process (the testable
core) and the collective `sync(actor, version) -> stats` (the Megatron glue).
"""
from __future__ import annotations

import time
from typing import Iterable, Optional

import torch


Bucket = list  # [(hf_name, tensor), ...]


def bucket_nbytes(bucket: Bucket) -> int:
    return sum(t.numel() * t.element_size() for _, t in bucket)


def by_dtype(bucket: Bucket) -> list[Bucket]:
    """The bucket split by dtype, in order of first appearance (one flattened buffer each; servers
    before multi-dtype flattened buckets need it, and it costs one request per extra dtype)."""
    groups: dict[torch.dtype, Bucket] = {}
    for name, tensor in bucket:
        groups.setdefault(tensor.dtype, []).append((name, tensor))
    return list(groups.values())


def serialize_flattened(named: Bucket, ranks: int) -> tuple[list[str], dict]:
    """One base64 payload per TP rank for one dtype group, and the object to keep alive until the
    server replies (the flattened buffer the payloads point at)."""
    from sglang.srt.utils import MultiprocessingSerializer
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

    if any(t.is_cuda for _, t in named):
        from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions

        # name devices by UUID, not index: the server's CUDA_VISIBLE_DEVICES may differ from ours
        monkey_patch_torch_reductions()
    else:
        share_cpu_tensors_by_name()
    flat = FlattenedTensorBucket(named_tensors=[(n, t.detach()) for n, t in named])
    data = {"flattened_tensor": flat.get_flattened_tensor(), "metadata": flat.get_metadata()}
    return [MultiprocessingSerializer.serialize(data, output_str=True) for _ in range(ranks)], data


def share_cpu_tensors_by_name() -> None:
    """CPU tensors reach the server's scheduler through /dev/shm files named in the payload (torch's
    file_system strategy). The default strategy passes file descriptors, which only processes sharing
    our multiprocessing authkey may fetch: a real server's scheduler dies on them
    (AuthenticationError in rebuild_storage_fd). Process-wide, idempotent."""
    import torch.multiprocessing as torch_mp

    if torch_mp.get_sharing_strategy() != "file_system":
        torch_mp.set_sharing_strategy("file_system")


async def _post_in_order(aio, url: str, payload_lists: list, version: Optional[int]) -> None:
    for payloads in payload_lists:
        await aio.update_weights_from_tensor(url, payloads, weight_version=version)


def open_update(client, pause_mode: str = "abort", *, resume_weights: bool = False) -> None:
    """Before tensor / NCCL updates, on every server: [resume weights] -> pause -> flush -> begin."""
    if resume_weights:  # colocated: the weights first, the KV cache only after the buckets are gone
        client.resume_memory_occupation(["weights"])
    client.run(client.aio.open_weight_update(pause_mode))


def close_update(client, ok: bool, *, resume_kv_cache: bool = False) -> None:
    """end -> continue [-> resume KV cache and CUDA graphs]. After a failure (`ok` False) the
    session is ended but generation stays paused (the weights are partly new), and an error here
    does not hide the first one."""
    try:
        client.run(client.aio.close_weight_update(resume=ok))
        if ok and resume_kv_cache:
            client.resume_memory_occupation(["kv_cache", "cuda_graph"])
    except Exception:
        if ok:
            raise


def _client_of(target):
    """(client, engine): an SGLangEngine gives both, an SGLangClient only the client."""
    client = getattr(target, "client", target)
    return client, (target if target is not client else None)


class TensorWeightSync:
    name = "tensor"

    def __init__(self, target=None, *, bucket_bytes: int = 512 << 20, pause_mode: str = "abort",
                 manage_memory: bool = False):
        """`target`: the SGLangEngine (or SGLangClient) on global rank 0, None on the other ranks."""
        self.client, self.engine = _client_of(target) if target is not None else (None, None)
        self.bucket_bytes = bucket_bytes
        self.pause_mode = pause_mode
        self.manage_memory = manage_memory
        self._tp: dict[str, int] = {}

    # ------------------------------------------------------------------ the core (one process)
    def push(self, buckets: Iterable[Bucket], version: Optional[int] = None) -> dict:
        """Open the update on every server, send `buckets`, close it; returns stats."""
        start = time.perf_counter()
        self.open()
        ok = False
        try:
            stats = self.send(buckets, version)
            ok = True
        finally:
            self.close(ok)
        if self.engine is not None and version is not None:
            self.engine.weight_version = version
        return {**stats, "seconds": time.perf_counter() - start}

    def _released(self, tag: str) -> bool:
        """Whether to resume `tag` (manage_memory): what the engine released (resuming a tag that
        is not released kills a 0.5.23 server's scheduler), or always with a bare client."""
        released = getattr(self.engine, "released", None)
        return self.manage_memory and (released is None or tag in released)

    def open(self) -> None:
        if self._released("weights"):  # the weights first, the KV cache only after the buckets are gone
            self._resume(["weights"])
        open_update(self.client, self.pause_mode)

    def close(self, ok: bool = True) -> None:
        close_update(self.client, ok)
        tags = [t for t in ("kv_cache", "cuda_graph") if self._released(t)]
        if ok and tags:
            self._resume(tags)

    def _resume(self, tags: list) -> None:
        if self.engine is not None and hasattr(self.engine, "released"):
            self.engine.resume_memory(tags)  # keeps the engine's record of what is released
        else:
            self.client.resume_memory_occupation(tags)

    def send(self, buckets: Iterable[Bucket], version: Optional[int] = None) -> dict:
        """Send buckets inside an open update; one bucket in flight while the next is prepared.
        Servers are updated concurrently, each one's requests in order (one at a time)."""
        urls = self.client.server_urls
        for url in urls:
            if url not in self._tp:
                self._tp[url] = self.client.tp_size(url)
        tensors = nbytes = requests = 0
        in_flight: tuple[list, list] = ([], [])
        try:
            for bucket in buckets:
                jobs: dict[str, list] = {url: [] for url in urls}
                alive = []
                for group in by_dtype(bucket):
                    for url in urls:
                        payloads, keep = serialize_flattened(group, self._tp[url])
                        jobs[url].append(payloads)
                        alive.append(keep)
                self._wait(in_flight)  # the previous bucket's buffers may go only after its replies
                in_flight = ([self.client.submit(_post_in_order(self.client.aio, url, jobs[url], version))
                              for url in urls], alive)
                tensors += len(bucket)
                nbytes += bucket_nbytes(bucket)
                requests += sum(len(j) for j in jobs.values())
            self._wait(in_flight)
        except BaseException:
            for fut in in_flight[0]:
                fut.cancel()
            raise
        return {"tensors": tensors, "bytes": nbytes, "requests": requests}

    @staticmethod
    def _wait(in_flight) -> None:
        futures, _alive = in_flight  # _alive: referenced until here on purpose
        for fut in futures:
            fut.result()

    # ------------------------------------------------------------------ Megatron glue (collective)
    def sync(self, actor, version: int) -> dict:
        """Every rank calls it. Global rank 0 opens and closes the update; the first rank of each
        pipeline stage (tp = dp = cp = 0) sends that stage's buckets straight to the servers, so the
        servers must be on those ranks' node. The TP all-gathers need the whole TP group."""
        import torch.distributed as dist

        from .collective import client_for_sender, sender_roles, stream_stage, summed_stats

        start = time.perf_counter()
        rank = dist.get_rank()
        replica, sender = sender_roles()
        if not getattr(self, "_shared", False):
            self.client = client_for_sender(self.client, sender)
            self._shared = True
        if rank == 0:
            self.open()
        ok = True
        try:
            dist.barrier()
            stats = stream_stage(actor, self.bucket_bytes, self.send, version, replica=replica, sender=sender)
            dist.barrier()
        except BaseException:
            ok = False
            raise
        finally:
            if rank == 0:
                self.close(ok)
        if rank == 0 and self.engine is not None:
            self.engine.weight_version = version
        return summed_stats(stats, start)
