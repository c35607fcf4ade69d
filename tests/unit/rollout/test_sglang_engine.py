"""SGLangEngine, the RolloutEngine protocol over SGLang servers: attached to fake servers in this
process, and launched as fake server processes."""
import socket

import pytest
import torch
from fake_sglang import FAKE_LAUNCHER as FAKE
from fake_sglang import FakeSGLang

from megatron_rl.config.schema import SGLangConfig
from megatron_rl.rollout.sglang_engine import SGLangEngine
from megatron_rl.rollout.sglang_launch import probe
from megatron_rl.rollout.types import SamplingParams



def test_engine_over_two_attached_servers():
    pytest.importorskip("sglang.srt.weight_sync.tensor_bucket")
    with FakeSGLang(tp_size=2) as a, FakeSGLang() as b:
        engine = SGLangEngine(SGLangConfig(urls=[a.url, b.url], health_timeout_s=5))
        try:
            assert engine.health()
            batch = engine.generate([[1], [2], [3], [4]], SamplingParams(max_new_tokens=3), n=2)
            assert [s.prompt_index for s in batch.samples] == [0, 0, 1, 1, 2, 2, 3, 3]
            assert {s.weight_version for s in batch.samples} == {0}
            # no router: the groups are spread over both servers
            assert sum(p == "/generate" for p, _ in a.requests) == 2 == sum(p == "/generate" for p, _ in b.requests)

            weights = [("w", torch.randn(3, 2)), ("b", torch.ones(2, dtype=torch.bfloat16))]
            from megatron_rl.weight_sync.tensor import TensorWeightSync

            assert TensorWeightSync(engine).push([weights], version=5)["tensors"] == 2
            assert engine.weight_version == 5
            for fake in (a, b):  # weight updates go to every server
                assert set(fake.weights) == {"w", "b"} and torch.equal(fake.weights["w"], weights[0][1])
            assert {s.weight_version for s in engine.generate([[9]], SamplingParams(max_new_tokens=1), n=2).samples} == {5}

            groups = list(engine.iter_groups([[1], [2]], SamplingParams(max_new_tokens=1), n=3, first_index=10))
            assert sorted(g[0].prompt_index for g in groups) == [10, 11] and all(len(g) == 3 for g in groups)

            engine.release_memory()
            engine.release_memory(["weights"])  # already released: nothing sent
            engine.resume_memory(["weights"])
            engine.resume_memory()  # only what is still released (0.5.23 fails on the rest)
            assert a.events[-3:] == ["release:weights,kv_cache,cuda_graph", "resume:weights",
                                     "resume:kv_cache,cuda_graph"]
            assert engine.released == set()
        finally:
            engine.shutdown()
        assert probe(a.url)[0]  # attached servers are not ours to stop


def test_engine_launches_servers_and_shutdown_stops_them(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = SGLangConfig(num_servers=1, base_port=port, health_timeout_s=20)
    engine = SGLangEngine(cfg, "/ckpt", log_dir=str(tmp_path), launcher=FAKE)
    try:
        assert engine.server_urls == [f"http://127.0.0.1:{port}"]
        batch = engine.generate([[5, 6]], SamplingParams(max_new_tokens=1, stop_token_ids=(8,)), n=2)
        assert [s.response_ids for s in batch.samples] == [[7], [8]]
        assert [s.finish_reason for s in batch.samples] == ["length", "stop"]
    finally:
        engine.shutdown()
    assert not probe(f"http://127.0.0.1:{port}", timeout_s=0.5)[0]


def test_engine_needs_a_model_path_to_launch():
    with pytest.raises(ValueError, match="needs the model path"):
        SGLangEngine(SGLangConfig())
