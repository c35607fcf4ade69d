"""Weight transports against the imitation server, for what the real one cannot be made to show:
servers before 0.5.21 (no session), a GPU server's memory resumed around the update, a failure in
the middle of an update, the engine's flat stream bucketed. The payloads, the session order and the
disk checkpoint are checked against the real server (tests/sglang_server/test_real_megatron_sync.py)."""
import pytest
import torch
from fake_sglang import FakeSGLang

from megatron_rl.rollout.sglang_client import SGLangClient, SGLangError
from megatron_rl.models.hf_io import bucketize
from megatron_rl.weight_sync.tensor import TensorWeightSync, by_dtype

pytest.importorskip("sglang.srt.weight_sync.tensor_bucket")  # the serializer side of sglang (--no-deps)


def _buckets():
    g = torch.Generator().manual_seed(0)
    return [
        [("model.embed_tokens.weight", torch.randn(7, 4, generator=g).to(torch.bfloat16)),
         ("model.norm.weight", torch.randn(4, generator=g)),  # fp32 in a bf16 bucket: two flattened groups
         ("model.layers.0.self_attn.q_proj.weight", torch.randn(4, 4, generator=g).to(torch.bfloat16)),
         ("model.layers.0.self_attn.q_proj.bias", torch.randn(4, generator=g).to(torch.float16))],
        [("lm_head.weight", torch.randn(7, 4, generator=g).t().contiguous().t()),  # a transposed view
         ("model.rotary.inv_freq", torch.arange(5, dtype=torch.int64))],
    ]


def _expected():
    return {n: t.clone() for b in _buckets() for n, t in b}


@pytest.fixture
def servers():
    with FakeSGLang(tp_size=2) as a, FakeSGLang(tp_size=1) as b:
        yield a, b


def _assert_same(received, expected):
    assert set(received) == set(expected)
    for name, want in expected.items():
        got = received[name]
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name


def test_tensor_transport_on_a_server_before_0_5_21_opens_no_session():
    with FakeSGLang(version="0.5.20", legacy_info_route=True) as old, SGLangClient([old.url]) as client:
        TensorWeightSync(client).push(_buckets(), version=1)
        _assert_same(old.weights, _expected())
        assert old.events == ["pause", "flush"] + ["update_tensor"] * 5 + ["continue"]


def test_colocated_memory_resumes_weights_first_and_the_kv_cache_last(servers):
    fake = servers[0]
    with SGLangClient([fake.url]) as client:
        client.release_memory_occupation()  # as after a rollout, before training
        TensorWeightSync(client, manage_memory=True).push(_buckets()[:1], version=2)
    assert fake.events == ["release:weights,kv_cache,cuda_graph", "resume:weights", "pause", "flush", "begin",
                           "update_tensor", "update_tensor", "update_tensor", "end", "continue",
                           "resume:kv_cache,cuda_graph"]
    assert not fake.released


def test_a_failed_update_closes_the_session_and_leaves_generation_paused(servers):
    fake = servers[0]
    with SGLangClient([fake.url]) as client:
        client.release_memory_occupation(["weights"])  # an update into released weights is refused
        with pytest.raises(SGLangError) as err:
            TensorWeightSync(client).push(_buckets(), version=3)
    assert "\n" not in str(err.value) and f"/update_weights_from_tensor at {fake.url} refused" in str(err.value)
    assert fake.events[-1] == "end" and "continue" not in fake.events
    assert fake.paused and not fake.session_open


def test_engine_style_flat_stream_is_bucketed():
    named = [(f"w{i}", torch.zeros(10)) for i in range(5)]  # 40 bytes each
    assert [[n for n, _ in b] for b in bucketize(named, 100)] == [["w0", "w1"], ["w2", "w3"], ["w4"]]
    assert [[n for n, _ in b] for b in bucketize(named, 10)] == [[f"w{i}"] for i in range(5)]  # too big: alone
    mixed = [("a", torch.zeros(1)), ("b", torch.zeros(1, dtype=torch.bfloat16)), ("c", torch.zeros(1))]
    assert [[n for n, _ in g] for g in by_dtype(mixed)] == [["a", "c"], ["b"]]
