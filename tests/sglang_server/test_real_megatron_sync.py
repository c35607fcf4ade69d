"""Weight sync from Megatron actors (2 gloo ranks: TP=2, or PP=2) into SGLang's real server on the
CPU, through the tensor transport (flattened buckets, /dev/shm files: torch's file_system sharing),
the disk transport, and the distributed transport (weight_sync/nccl.py's protocol with gloo standing
in for NCCL: the server's group and broadcasts are SGLang's own), each followed by the parity probe: the server's logprobs of its own samples
equal the trainer's within the dtype's tolerance. The actor starts from other weights than the
server's, and is changed again before the disk and distributed syncs, so each sync has something to deliver (the
gap before it is large). The server's weight_version follows every sync.

Tolerances reached (max |server - trainer| logprob over the probes, measured 2026-12-07): fp32
1.2e-6 at TP=2 and PP=2 (asserted < 1e-4); bf16 (server and trainer in bf16, TP=2) 2.1e-2 after the
tensor sync, 2.3e-2 after the disk sync (asserted < 0.15).
"""
from __future__ import annotations

import pytest

from dist_harness import run_ranks
from real_server_lib import launch_engine, make_tiny_checkpoint, model_config

TOL = {"fp32": 1e-4, "bf16": 0.15}
VISIBLE = 0.3  # before a sync the gap must be at least this: the sync has something to deliver
PROBES = [[5, 6, 7, 8], [9, 10, 11], [20, 21, 22, 23, 24], [30, 31]]


def _worker(hf_dir, url, layout, dtype, disk_root):
    import torch
    import torch.distributed as dist

    from megatron_rl.config.schema import ParallelConfig
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel
    from megatron_rl.rollout.sglang_client import SGLangClient
    from megatron_rl.weight_sync.disk import DiskWeightSync
    from megatron_rl.weight_sync.nccl import NcclWeightSync
    from megatron_rl.weight_sync.parity import check_parity
    from megatron_rl.weight_sync.tensor import TensorWeightSync

    parallel = ParallelConfig(tensor=2 if layout == "tp2" else 1, pipeline=2 if layout == "pp2" else 1)
    init_parallel(parallel, seed=1)
    mc = model_config(dtype).model_copy(update={"kernels": "reference"})
    actor = MegatronRole.build("actor", mc, parallel, hf_path=hf_dir)
    rank0 = dist.get_rank() == 0
    client = SGLangClient([url]) if rank0 else None

    def gap():  # check_parity's gap, measured (the test compares it with the tolerance)
        return check_parity(actor, client, PROBES, max_new_tokens=8, tol=1e9)["rollout_train_logprob_gap_max"]

    def server_version():
        if not rank0:
            return None
        info = client.run(client.aio._call(url, "/get_model_info", method="GET"))
        return info.get("weight_version")

    out = {"before_tensor": gap()}
    tensor = TensorWeightSync(client, bucket_bytes=64 << 10)  # several buckets: the pipelining is exercised
    stats = tensor.sync(actor, version=1)
    out.update(tensor_stats=stats, after_tensor=gap(), version_after_tensor=server_version())

    def perturb(seed):  # new weights on every rank's shard: the next sync must deliver them
        with torch.no_grad():
            # one seed on every rank: TP peers hold replicated tensors (norms, row-parallel biases) that must stay equal
            g = torch.Generator().manual_seed(seed)
            for chunk in actor.chunks:
                for p in chunk.parameters():
                    p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.05 * (p.float().std() + 0.05))

    perturb(100)
    out["before_disk"] = gap()
    disk = DiskWeightSync(client, disk_root)
    disk.sync(actor, version=2)
    out.update(after_disk=gap(), version_after_disk=server_version())

    # the disaggregated transport's protocol (init_weights_update_group + update_weights_from_distributed
    # with broadcasts), with gloo standing in for NCCL on the CPU: SGLang's side is the real one
    perturb(200)
    out["before_distributed"] = gap()
    distributed = NcclWeightSync(client, backend="gloo", master_address="127.0.0.1", bucket_bytes=64 << 10)
    out["distributed_stats"] = distributed.sync(actor, version=3)
    out.update(after_distributed=gap(), version_after_distributed=server_version())
    if rank0:
        client.close()
    return out


@pytest.fixture(scope="module")
def server_in(sglang_python, server_logs, tmp_path_factory):
    """dtype -> a real server in that dtype (launched once per module), started from weights the actor
    does not have."""
    path, _ = make_tiny_checkpoint(tmp_path_factory.mktemp("server-start"), seed=5)
    engines = {}

    def get(dtype):
        if dtype not in engines:
            engines[dtype] = launch_engine(path, server_logs / f"megatron-sync-{dtype}",
                                           dtype={"fp32": "float32", "bf16": "bfloat16"}[dtype],
                                           placement="disaggregated", weight_sync="disk")
        return engines[dtype]

    yield get
    for engine in engines.values():
        engine.shutdown()


# bf16 at TP=2 only: one more 25 s spawn at PP=2 would check nothing the fp32 PP=2 run does not
@pytest.mark.parametrize("dtype,layout", [("fp32", "tp2"), ("fp32", "pp2"), ("bf16", "tp2")])
def test_megatron_actor_syncs_into_the_real_server(server_in, dtype, layout, tiny_model, tmp_path):
    engine = server_in(dtype)
    out = run_ranks(_worker, 2, tiny_model[0], engine.server_urls[0], layout, dtype, str(tmp_path / "disk"),
                    timeout=300)[0]
    tol = TOL[dtype]
    assert out["before_tensor"] > VISIBLE, out
    assert out["after_tensor"] < tol, out
    from safetensors import safe_open

    with safe_open(f"{tiny_model[0]}/model.safetensors", "pt") as f:
        hf_tensors = len(list(f.keys()))
    assert out["tensor_stats"]["tensors"] == hf_tensors and out["tensor_stats"]["requests"] >= 3, out
    assert out["version_after_tensor"] == "1", out
    assert out["before_disk"] > VISIBLE * 0.1, out
    assert out["after_disk"] < tol, [(k, v) for k, v in out.items() if k != "tensor_stats"][3:]
    assert out["version_after_disk"] == "2", out
    assert out["before_distributed"] > VISIBLE * 0.1, out
    assert out["after_distributed"] < tol, [(k, v) for k, v in out.items() if "stats" not in k]
    assert out["version_after_distributed"] == "3", out
    assert out["distributed_stats"]["tensors"] == hf_tensors, out
    print(f"{layout} {dtype}: parity gap after tensor sync {out['after_tensor']:.2e}, after disk sync "
          f"{out['after_disk']:.2e}, after distributed (gloo) sync {out['after_distributed']:.2e} "
          f"(before: {out['before_tensor']:.2f}, {out['before_disk']:.2f}, {out['before_distributed']:.2f})")
