"""Weight transports from the trainer's shards to the rollout engines, one file per transport.

Each has `sync(actor, version) -> stats`, called on every rank (the engine side exists on rank 0),
and the resharding they share is `models.hf_io.iter_hf_buckets`:
  in_process  the embedded engine in the trainer's process
  tensor      SGLang on the same node: CUDA-IPC handles, flattened per-dtype buckets (colocated)
  nccl        SGLang on other GPUs: broadcasts over a group joined by every engine rank (disaggregated)
  disk        HF safetensors written atomically, then /update_weights_from_disk

`rollout.weight_sync: auto` resolves by engine and placement (`resolve_weight_sync`, defined with
the config checks so `megatron-rl validate` refuses an impossible choice before anything starts):
embedded -> in_process, sglang colocated -> tensor, sglang disaggregated -> nccl; disk only when
asked. `weight_sync.factory.build_weight_sync` builds the transport from the config.
"""
from ..config.checks import WEIGHT_SYNC_AUTO, resolve_weight_sync, weight_sync_problem
from .disk import DiskWeightSync
from .in_process import InProcessWeightSync
from .nccl import NcclWeightSync
from .tensor import TensorWeightSync

TRANSPORTS = {"in_process": InProcessWeightSync, "tensor": TensorWeightSync, "nccl": NcclWeightSync,
              "disk": DiskWeightSync}

__all__ = ["DiskWeightSync", "InProcessWeightSync", "NcclWeightSync", "TRANSPORTS", "TensorWeightSync",
           "WEIGHT_SYNC_AUTO", "resolve_weight_sync", "weight_sync_problem"]
