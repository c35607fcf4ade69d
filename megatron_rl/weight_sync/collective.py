"""The Megatron side shared by the transports' collective `sync(actor, version)`.

Data-parallel (and context-parallel) rank 0 holds the replica that is streamed; in it, each pipeline
stage's TP rank 0 is the sender and its TP peers only take part in the all-gathers.
"""
from __future__ import annotations

import time


def sender_roles() -> tuple[bool, bool]:
    """(replica, sender) for this rank."""
    from megatron.core import parallel_state as ps

    replica = ps.get_data_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0
    return replica, replica and ps.get_tensor_model_parallel_rank() == 0


def client_for_sender(client, sender: bool):
    """Collective: rank 0's server URLs reach every stage's sender, which gets a client of its own
    (the engine lives on rank 0). Returns the client this rank sends with (None off the senders)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    if rank == 0 and client is None:
        raise ValueError("the SGLang engine (or client) must be passed on global rank 0")
    box = [client.server_urls if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if client is None and sender:
        from ..rollout.sglang_client import SGLangClient

        client = SGLangClient(box[0])
    return client


def stream_stage(actor, bucket_bytes: int, send, version, *, replica: bool, sender: bool) -> dict:
    """This rank's part of streaming its pipeline stage: `send(buckets, version) -> stats` on the
    sender; the other replica ranks drain the stream (the TP all-gathers need them)."""
    from ..models.hf_io import iter_hf_buckets

    stats = {"tensors": 0, "bytes": 0, "requests": 0}
    if replica:
        buckets = iter_hf_buckets(actor.chunks, actor.model, bucket_bytes, value_head=actor.value_head)
        if sender:
            stats = send(buckets, version)
        else:
            for _ in buckets:
                pass
    return stats


def summed_stats(stats: dict, start: float) -> dict:
    """Collective: every rank's tensors / bytes / requests summed, plus the seconds since `start`."""
    import torch.distributed as dist

    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, stats)
    out = {k: sum(s[k] for s in everyone) for k in ("tensors", "bytes", "requests")}
    return {**out, "seconds": time.perf_counter() - start}
