"""The NCCL transport with gloo standing in for NCCL: two fake servers run as processes, join the
weight-update group through sglang's own `init_custom_process_group`, and receive the broadcasts
the way SGLang does (a flattened buffer per dtype, or one broadcast per tensor)."""
import httpx
import pytest
import torch
from fake_sglang import FAKE_LAUNCHER, free_port_pair

from megatron_rl.config.schema import SGLangConfig
from megatron_rl.rollout.sglang_client import SGLangClient
from megatron_rl.rollout.sglang_launch import SGLangServers
from megatron_rl.weight_sync.nccl import NcclWeightSync

pytest.importorskip("sglang.srt.weight_sync.tensor_bucket")


def _buckets(seed):
    g = torch.Generator().manual_seed(seed)
    return [[("a", torch.randn(3, 5, generator=g)), ("b", torch.randn(7, generator=g).to(torch.bfloat16)),
             ("c", torch.randn(2, 2, generator=g))],
            [("d", torch.arange(6, dtype=torch.int32).view(2, 3)), ("e", torch.randn(3, generator=g).half())]]


def _state(url):
    return httpx.get(url + "/fake_state", trust_env=False, timeout=10).json()


def _check(url, buckets):
    received = _state(url)["weights"]
    for name, t in (x for b in buckets for x in b):
        got = received[name]
        assert got["dtype"] == str(t.dtype).removeprefix("torch.") and got["shape"] == list(t.shape), name
        assert got["values"] == t.double().flatten().tolist(), name


def test_broadcast_weights_reach_every_server(tmp_path):
    cfg = SGLangConfig(num_servers=2, base_port=free_port_pair(), health_timeout_s=30)
    servers = SGLangServers.launch(cfg, "/m", log_dir=str(tmp_path), launcher=FAKE_LAUNCHER + ["--fake-join-groups"],
                                   router=False)
    try:
        with SGLangClient(servers.server_urls) as client:
            sync = NcclWeightSync(client, backend="gloo", master_address="127.0.0.1", timeout_s=60)
            stats = sync.push(_buckets(0), version=4)  # connects on first use
            assert stats["tensors"] == 5 and stats["requests"] == 2 * 4  # 4 dtype groups, 2 servers
            for url in servers.server_urls:
                _check(url, _buckets(0))  # flattened: one buffer and one broadcast per dtype group
            sync.flatten = False  # one broadcast per tensor: any server version
            sync.push(_buckets(1), version=5)
            for url in servers.server_urls:
                _check(url, _buckets(1))
                state = _state(url)
                assert state["weight_version"] == "5"
                assert state["events"] == (["init_group", "pause", "flush", "begin"] + ["update_distributed"] * 4
                                           + ["end", "continue", "pause", "flush", "begin"]
                                           + ["update_distributed"] * 4 + ["end", "continue"])
            sync.disconnect()
            assert all(_state(u)["events"][-1] == "destroy_group" for u in servers.server_urls)
    finally:
        servers.shutdown(grace_s=5)
