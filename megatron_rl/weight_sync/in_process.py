"""Weight sync to an engine living in the trainer's own process (the embedded engine).

The engine lives on global rank 0. The actor's shards become full HF-named tensors through
`models.hf_io.iter_hf_buckets` (TP all-gather per tensor, bounded buckets); pipeline stage 0 hands
its buckets to the engine directly, every later stage's first rank sends its buckets to rank 0, one
at a time. Only data-parallel rank 0's model replica takes part; the other replicas hold the same
weights.
"""
from __future__ import annotations

import time
from typing import Optional

import torch.distributed as dist


class InProcessWeightSync:
    def __init__(self, engine, *, bucket_bytes: int = 512 << 20):
        """Collective: every rank constructs it (rank 0 passes the engine, the others None)."""
        from megatron.core import parallel_state as ps

        self.engine = engine
        self.bucket_bytes = bucket_bytes
        world, pp = dist.get_world_size(), ps.get_pipeline_model_parallel_world_size()
        # Megatron orders ranks tp-cp-dp-pp: (tp, cp, dp) = 0 of stage s is rank s * world / pp
        self.stage_leaders = [s * world // pp for s in range(pp)]
        self.pair_groups = {s: dist.new_group([0, leader]) for s, leader in enumerate(self.stage_leaders) if s > 0}
        if dist.get_rank() == 0 and engine is None:
            raise ValueError("the embedded engine must be passed on global rank 0")

    def sync(self, actor, version: int) -> dict:
        """Push the actor's current weights to the engine; returns {"tensors", "bytes", "seconds"} on rank 0."""
        from megatron.core import parallel_state as ps

        from ..models.hf_io import iter_hf_buckets
        from .collective import sender_roles

        start = time.perf_counter()
        rank, stage = dist.get_rank(), ps.get_pipeline_model_parallel_rank()
        tensors = nbytes = 0
        replica, leader = sender_roles()  # leader: this stage's first rank, self.stage_leaders[stage]
        if replica:
            for bucket in iter_hf_buckets(actor.chunks, actor.model, self.bucket_bytes, value_head=actor.value_head):
                if rank == 0:
                    tensors += self.engine.update_weights(bucket)
                    nbytes += sum(t.numel() * t.element_size() for _, t in bucket)
                elif leader:
                    self._send(stage, [(n, t.cpu()) for n, t in bucket])
                del bucket  # free it before the next one is gathered: one bucket alive, not two
            if leader and stage > 0:
                self._send(stage, None)  # end of this stage's stream
        if rank == 0:
            for stage in self.pair_groups:
                while (bucket := self._receive(stage)) is not None:
                    tensors += self.engine.update_weights(bucket)
                    nbytes += sum(t.numel() * t.element_size() for _, t in bucket)
            self.engine.weight_version = version
        dist.barrier()
        return {"tensors": tensors, "bytes": nbytes, "seconds": time.perf_counter() - start}

    def _send(self, stage: int, bucket: Optional[list]) -> None:
        dist.broadcast_object_list([bucket], src=self.stage_leaders[stage], group=self.pair_groups[stage])

    def _receive(self, stage: int) -> Optional[list]:
        box = [None]
        dist.broadcast_object_list(box, src=self.stage_leaders[stage], group=self.pair_groups[stage])
        return box[0]
