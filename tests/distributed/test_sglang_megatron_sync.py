"""The transports' Megatron glue, `sync(actor, version)`, on a PP=2 actor (2 gloo ranks): each
stage's first rank sends its stage's layers (nccl: over a group of its own, stage after stage), and
one fake server process ends up with exactly the HF checkpoint the actor was loaded from, through
each transport (tensor, disk, and nccl with gloo standing in for NCCL). One spawn of two ranks costs
most of this test's ~25 s; TP=2 x PP=2 (4 ranks) passes too but takes ~35 s here."""
import sys
from pathlib import Path

import httpx
import pytest
import torch

from dist_harness import run_ranks
from hf_models import make_hf_model, model_config
from megatron_rl.config.schema import SGLangConfig
from megatron_rl.rollout.sglang_launch import SGLangServers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "rollout"))
from fake_sglang import FAKE_LAUNCHER, free_port_pair  # noqa: E402

pytest.importorskip("sglang.srt.weight_sync.tensor_bucket")


def _received(url):
    weights = httpx.get(url + "/fake_state", trust_env=False, timeout=30).json()["weights"]
    return {n: torch.tensor(w["values"], dtype=torch.float64).view(w["shape"]) for n, w in weights.items()}


def _worker(hf_dir, url, sync_root):
    import torch.distributed as dist
    import torch.multiprocessing as tmp

    from megatron_rl.config.schema import ParallelConfig
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel
    from megatron_rl.rollout.sglang_client import SGLangClient
    from megatron_rl.weight_sync.disk import DiskWeightSync
    from megatron_rl.weight_sync.nccl import NcclWeightSync
    from megatron_rl.weight_sync.tensor import TensorWeightSync

    # CPU tensors reach another process by file name: the default (file descriptor) strategy hands
    # descriptors only to processes sharing our multiprocessing authkey; on GPUs it is CUDA IPC
    tmp.set_sharing_strategy("file_system")
    parallel = ParallelConfig(tensor=1, pipeline=2)
    init_parallel(parallel, seed=1)
    actor = MegatronRole.build("actor", model_config("qwen2").model_copy(update={"kernels": "reference"}), parallel,
                               hf_path=hf_dir)
    rank0 = dist.get_rank() == 0
    client = SGLangClient([url]) if rank0 else None
    out = {}
    transports = [TensorWeightSync(client, bucket_bytes=16 << 10), DiskWeightSync(client, sync_root),
                  NcclWeightSync(client, backend="gloo", master_address="127.0.0.1", bucket_bytes=16 << 10)]
    for version, sync in enumerate(transports, start=1):
        if rank0:
            client.run(client.aio._call(url, "/fake_reset", {}))
        dist.barrier()
        stats = sync.sync(actor, version)
        if rank0:
            out[sync.name] = (stats, _received(url))
    return out


def test_every_transport_delivers_the_actor_from_a_pipeline_parallel_layout(tmp_path):
    hf = make_hf_model("qwen2", seed=11)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    expected = {n: t.double() for n, t in hf.state_dict().items()}
    cfg = SGLangConfig(num_servers=1, base_port=free_port_pair(), health_timeout_s=30)
    servers = SGLangServers.launch(cfg, "/m", log_dir=str(tmp_path), launcher=FAKE_LAUNCHER + ["--fake-join-groups"])
    try:
        out = run_ranks(_worker, 2, str(tmp_path / "hf"), servers.server_urls[0], str(tmp_path / "sync"))[0]
    finally:
        servers.shutdown(grace_s=5)
    assert set(out) == {"tensor", "disk", "nccl"}
    for name, (stats, received) in out.items():
        assert set(received) == set(expected), name
        for key, want in expected.items():
            assert torch.equal(received[key], want), (name, key)
    assert out["tensor"][0]["tensors"] == len(expected) == out["nccl"][0]["tensors"]
    assert out["disk"][0]["path"] == str(tmp_path / "sync" / "v2")
