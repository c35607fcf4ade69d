"""Weight sync over an NCCL group that the trainer's sending rank and every SGLang TP rank join
(disaggregated placement: servers on other GPUs or nodes).

Setup (`connect`): each server is asked to `/init_weights_update_group` (master = the sending rank,
rank_offset = 1 + the TP ranks of the servers before it, world = 1 + all servers' TP ranks) while
the sender joins as rank 0; the HTTP calls return only once everyone has joined, so they run
concurrently with our join. The group is built the way SGLang builds its side (torch's rendezvous on
tcp://master:port, a store prefixed with the group name, `_new_process_group_helper`), so both
ends agree on the store keys; trainer and servers must run the same torch (the Docker image does).

Per bucket and dtype (`send`): `/update_weights_from_distributed` with the names, dtypes and shapes
goes to every server while the sender broadcasts the tensors from group rank 0, in the same order;
the server allocates, receives and loads. With `flatten` (default) a dtype group is one flattened
buffer and one broadcast (`load_format="flattened_bucket"`, which sglang 0.5.23 supports); without
it, one broadcast per tensor (any version). The whole update sits in pause -> flush -> begin ... end
-> continue like the tensor transport.

Pipeline stages (`sync`): every stage's first rank has a group of its own with the servers and the
stages send one after another. Stages sending at once could deadlock: a server serves one update
request at a time, and a broadcast completes only when every server has reached it.
"""
from __future__ import annotations

import socket
import time
import uuid
from datetime import timedelta
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from .tensor import Bucket, _client_of, bucket_nbytes, by_dtype, close_update, open_update


def new_weight_group(master_address: str, master_port: int, world_size: int, group_name: str, *,
                     backend: str = "nccl", rank: int = 0, timeout_s: float = 600.0):
    """Join (as `rank`, 0 = the sender, who hosts the rendezvous store) a process group outside the
    trainer's world, built like SGLang's `init_custom_process_group` builds its side."""
    from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world, rendezvous

    timeout = timedelta(seconds=timeout_s)
    store, rank, world_size = next(rendezvous(f"tcp://{master_address}:{master_port}", rank, world_size,
                                              timeout=timeout))
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)
    pg, _ = _new_process_group_helper(world_size, rank, [], Backend(backend), store, group_name=group_name,
                                      backend_options=None, timeout=timeout)
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}  # group ranks are the "global" ranks
    return pg


def free_port(host: str = "") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def this_node_address() -> str:
    """An address of this node the servers can reach (the one used to route outwards)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _while_pending(futures, collective, poll_s: float = 0.05):
    """Run our side of a collective while the servers' HTTP calls (which join it) are in flight.
    A server that refuses (its reply comes back as an error while ours still waits for it) fails us
    at once with its one-line reason, instead of after the group's timeout; the blocked collective
    is left to that timeout in its daemon thread. Returns the collective's result."""
    import threading

    box: dict = {}
    # a new thread starts on CUDA device 0: give it the caller's, so the group and broadcasts use it
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def run():
        if device is not None:
            torch.cuda.set_device(device)
        try:
            box["result"] = collective()
        except BaseException as e:  # noqa: BLE001  handed to the caller below
            box["error"] = e

    worker = threading.Thread(target=run, name="weight-sync-collective", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(poll_s)
        refused = next((f for f in futures if f.done() and not f.cancelled() and f.exception() is not None), None)
        if refused is not None and worker.is_alive():
            for f in futures:
                f.cancel()
            raise refused.exception()
    if "error" in box:
        for f in futures:
            f.cancel()
        raise box["error"]
    for f in futures:
        f.result()
    return box["result"]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")  # the server does getattr(torch, name)


class NcclWeightSync:
    name = "nccl"

    def __init__(self, target=None, *, group_name: Optional[str] = None, backend: str = "nccl",
                 master_address: Optional[str] = None, bucket_bytes: int = 512 << 20, flatten: bool = True,
                 pause_mode: str = "abort", timeout_s: float = 600.0, master_port: Optional[int] = None):
        """`target`: the SGLangEngine (or SGLangClient) on global rank 0, None on the other ranks.
        `master_address`: how the servers reach the sending rank (default: this node's address);
        `master_port`: the rendezvous port of stage 0's group (stage s: + s; default: a free port).
        `group_name` defaults to one of this transport's own: a server keeps a group's name until it
        is destroyed, so a trainer that died (or restarted) without destroying its group could never
        form one of the same name on the servers it attaches to again."""
        self.client, self.engine = _client_of(target) if target is not None else (None, None)
        self.base_group_name = group_name or f"megatron_rl_weights_{uuid.uuid4().hex[:8]}"
        self.group_name = self.base_group_name
        self.backend = backend
        self.master_address = master_address
        self.master_port = master_port
        self._epoch = 0  # the engine's server restarts when the group was formed
        self.bucket_bytes = bucket_bytes
        self.flatten = flatten
        self.pause_mode = pause_mode
        self.timeout_s = timeout_s
        self.group = None

    # ------------------------------------------------------------------ the core (one process)
    def connect(self, master_port: Optional[int] = None) -> None:
        """Form the group between this process (rank 0) and every TP rank of every server."""
        aio = self.client.aio
        urls = self.client.server_urls
        tp = [self.client.tp_size(u) for u in urls]
        address = self.master_address or this_node_address()
        port = master_port or self.master_port or free_port()
        world = 1 + sum(tp)
        futures = [self.client.submit(aio.init_weights_update_group(
            url, master_address=address, master_port=port, rank_offset=1 + sum(tp[:i]), world_size=world,
            group_name=self.group_name, backend=self.backend)) for i, url in enumerate(urls)]
        self.group = _while_pending(futures, lambda: new_weight_group(
            address, port, world, self.group_name, backend=self.backend, timeout_s=self.timeout_s))

    def disconnect(self) -> None:
        if self.group is None:
            return
        for url in self.client.server_urls:
            self.client.run(self.client.aio.destroy_weights_update_group(url, self.group_name))
        dist.destroy_process_group(self.group)
        self.group = None

    def _restarts(self) -> int:
        return int(getattr(self.engine, "restart_count", 0) or 0) if self.engine is not None else 0

    def _name(self, stage: Optional[int] = None) -> str:
        """`<group_name>[_pp<stage>][_r<restarts>]`: a group formed again after a restart gets a new
        name (the surviving servers may still hold the old one)."""
        return (self.base_group_name + (f"_pp{stage}" if stage is not None else "")
                + (f"_r{self._epoch}" if self._epoch else ""))

    def _drop_group(self) -> None:
        """After a server restart the group is short of the restarted server's ranks (a broadcast
        would wait for them forever): the survivors drop it, and so do we (best effort)."""
        for url in self.client.server_urls:
            try:
                self.client.run(self.client.aio.destroy_weights_update_group(url, self.group_name))
            except Exception:  # the restarted server never had it
                pass
        try:
            dist.destroy_process_group(self.group)
        except Exception:
            pass
        self.group = None

    def push(self, buckets: Iterable[Bucket], version: Optional[int] = None) -> dict:
        start = time.perf_counter()
        restarts = self._restarts()
        if self.group is not None and restarts != self._epoch:
            self._drop_group()
        if self.group is None:
            self._epoch = restarts
            self.group_name = self._name()
            self.connect()
        open_update(self.client, self.pause_mode)
        ok = False
        try:
            stats = self.send(buckets, version)
            ok = True
        finally:
            close_update(self.client, ok)
        if self.engine is not None and version is not None:
            self.engine.weight_version = version
        return {**stats, "seconds": time.perf_counter() - start}

    def send(self, buckets: Iterable[Bucket], version: Optional[int] = None) -> dict:
        """Inside an open update: per bucket and dtype, the HTTP call to every server concurrently
        with our broadcasts; the next group waits for every server's reply."""
        aio = self.client.aio
        tensors = nbytes = requests = 0
        for bucket in buckets:
            for group in by_dtype(bucket):
                names = [n for n, _ in group]
                meta = dict(names=names, dtypes=[dtype_name(t.dtype) for _, t in group],
                            shapes=[list(t.shape) for _, t in group], group_name=self.group_name,
                            load_format="flattened_bucket" if self.flatten else None, weight_version=version)
                futures = [self.client.submit(aio.update_weights_from_distributed(url, **meta))
                           for url in self.client.server_urls]
                _while_pending(futures, lambda: self._broadcast(group))
                requests += len(futures)
            tensors += len(bucket)
            nbytes += bucket_nbytes(bucket)
        return {"tensors": tensors, "bytes": nbytes, "requests": requests}

    def _broadcast(self, group: Bucket) -> None:
        if self.flatten:
            from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

            # same layout as the server's FlattenedTensorBucket.empty: the tensors' bytes, in order
            flat = FlattenedTensorBucket(named_tensors=[(n, t.detach()) for n, t in group]).get_flattened_tensor()
            dist.broadcast(flat, group=self.group, group_src=0)
        else:
            for _, t in group:
                dist.broadcast(t.detach().contiguous(), group=self.group, group_src=0)

    # ------------------------------------------------------------------ Megatron glue (collective)
    def sync(self, actor, version: int) -> dict:
        """Every rank calls it. Each pipeline stage's first rank (tp = dp = cp = 0) sends its
        stage's buckets over its own group, stage after stage; global rank 0 opens and closes."""
        from megatron.core import parallel_state as ps

        from .collective import sender_roles, stream_stage, summed_stats

        start = time.perf_counter()
        rank = dist.get_rank()
        stage, pp = ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size()
        replica, sender = sender_roles()
        restarts = [self._restarts() if rank == 0 else None]
        dist.broadcast_object_list(restarts, src=0)  # rank 0's engine knows of server restarts
        if getattr(self, "_connected", False) and restarts[0] != self._epoch:
            if self.group is not None:
                self._drop_group()
            self._connected = False
        if not getattr(self, "_connected", False):
            self._epoch = restarts[0]
            self._connect_stages(sender, stage)
        if rank == 0:
            open_update(self.client, self.pause_mode)
        ok, stats = True, {"tensors": 0, "bytes": 0, "requests": 0}
        try:
            for s in range(pp):  # one stage at a time (see the module docstring)
                dist.barrier()
                if stage == s:
                    stats = stream_stage(actor, self.bucket_bytes, self.send, version, replica=replica, sender=sender)
            dist.barrier()
        except BaseException:
            ok = False
            raise
        finally:
            if rank == 0:
                close_update(self.client, ok)
        if rank == 0 and self.engine is not None:
            self.engine.weight_version = version
        return summed_stats(stats, start)

    def _connect_stages(self, sender: bool, stage: int) -> None:
        """Collective: every stage's sender gets a client and a group named `<group_name>_pp<stage>`
        (formed again, under a new name, after a server restart)."""
        from .collective import client_for_sender

        rank = dist.get_rank()
        if not getattr(self, "_shared", False):
            self.client = client_for_sender(self.client, sender)
            self._shared = True
        if sender:
            self.group_name = self._name(stage)
            # every sender is its group's master: its own address and a free port of its node
            self.master_address = self.master_address if rank == 0 and self.master_address else this_node_address()
        senders = [None] * dist.get_world_size()
        dist.all_gather_object(senders, stage if sender else None)
        for s in sorted({x for x in senders if x is not None}):  # a server joins one group at a time
            if sender and stage == s:
                self.connect(self.master_port + stage if self.master_port else None)
            dist.barrier()
        self._connected = True
