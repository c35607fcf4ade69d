"""The SGLang HTTP client against the fake server: parsing and grouping, the concurrency bound,
retries and their one-line errors, request ids, cancellation, version-dependent sessions."""
import threading
import time

import httpx
import pytest
from fake_sglang import FakeSGLang

from megatron_rl.rollout.sglang_client import (SGLangClient, SGLangError, SGLangStaleWeightsError,
                                               needs_weight_update_session, parse_version)
from megatron_rl.rollout.types import SamplingParams

FAST = dict(backoff_s=0.001, max_backoff_s=0.01)


@pytest.fixture
def fake():
    with FakeSGLang(vocab_size=50) as f:
        yield f


@pytest.fixture
def client(fake):
    with SGLangClient([fake.url], max_retries=2, **FAST) as c:
        yield c


def _generate_bodies(fake):
    return [b for p, b in fake.requests if p == "/generate"]


def test_single_sample_requests_have_no_n_and_weight_version_comes_from_the_server(fake, client):
    fake.weight_version = "12"  # what the server reports after an update sent with weight_version "12"
    batch = client.generate([[3]], SamplingParams(max_new_tokens=2), n=1, weight_version=4)
    assert "n" not in _generate_bodies(fake)[0]["sampling_params"]
    assert batch.samples[0].weight_version == 12
    fake.weight_version = "custom"  # not one of ours: the engine's version
    assert client.generate([[3]], SamplingParams(max_new_tokens=2), weight_version=4).samples[0].weight_version == 4


def test_replies_with_older_weights_than_the_rollout_are_not_used(fake, client):
    """A server that never got an update ("default": the checkpoint, version 0) or an older one
    serving a rollout of version 4 (a restarted server): its samples are asked for again, and after
    the retries the rollout fails in one line."""
    fake.weight_version = "default"
    assert client.generate([[3]], SamplingParams(max_new_tokens=2), weight_version=0).samples[0].weight_version == 0
    for reported in ("default", "3"):
        fake.weight_version = reported
        with pytest.raises(SGLangStaleWeightsError) as err:
            client.generate([[3]], SamplingParams(max_new_tokens=2), weight_version=4)
        assert "\n" not in str(err.value) and "instead of 4 3 times" in str(err.value)
    fake.weight_version = "5"  # newer (an update during the rollout): the server's record wins
    assert client.generate([[3]], SamplingParams(max_new_tokens=2), weight_version=4).samples[0].weight_version == 5


def test_concurrency_bound_counts_sequences_in_flight(fake):
    fake.delay_s = 0.03
    with SGLangClient([fake.url], max_concurrency=6, **FAST) as c:
        batch = c.generate([[i] for i in range(24)], SamplingParams(max_new_tokens=2), n=2)
    assert len(batch.samples) == 48
    assert fake.max_in_flight <= 6  # the fake counts n sequences per request
    assert fake.max_in_flight >= 4  # and requests did overlap


def test_a_group_larger_than_the_bound_still_runs(fake):
    with SGLangClient([fake.url], max_concurrency=2, **FAST) as c:
        assert len(c.generate([[1]], SamplingParams(max_new_tokens=1), n=5).samples) == 5


def test_5xx_is_retried_with_a_fresh_request_id(fake, client):
    fake.fail_next = [503, 500]
    batch = client.generate([[1], [2]], SamplingParams(max_new_tokens=2), n=2)
    assert len(batch.samples) == 4
    assert len(fake.rids) == 4 and len(set(fake.rids)) == 4  # 2 failures + 2 successes, all distinct


def test_request_ids_are_unique_across_calls_and_clients(fake, client):
    client.generate([[i] for i in range(10)], SamplingParams(max_new_tokens=1))
    with SGLangClient([fake.url], **FAST) as other:
        other.generate([[i] for i in range(10)], SamplingParams(max_new_tokens=1))
    assert len(fake.rids) == 20 and len(set(fake.rids)) == 20


def test_retries_exhausted_end_in_one_line_naming_url_and_last_status(fake, client):
    fake.fail_next = [503] * 10
    with pytest.raises(SGLangError) as err:
        client.generate([[1]], SamplingParams(max_new_tokens=2))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"/generate at {fake.url}" in msg and "3 attempts" in msg and "HTTP 503" in msg
    assert len(_generate_bodies(fake)) == 3  # 1 + max_retries


def test_a_4xx_is_not_retried(fake, client):
    fake.fail_next = [400]
    with pytest.raises(SGLangError, match=r"refused prompt 0: HTTP 400: injected failure"):
        client.generate([[1]], SamplingParams(max_new_tokens=2))
    assert len(_generate_bodies(fake)) == 1


def test_timeout_is_reported(fake):
    fake.delay_s = 0.5
    with SGLangClient([fake.url], max_retries=0, request_timeout_s=0.1, **FAST) as c:
        with pytest.raises(SGLangError, match="ReadTimeout"):
            c.generate([[1]], SamplingParams(max_new_tokens=1))


def test_aborted_samples_are_asked_for_again(fake, client):
    fake.abort_next = [1]  # the first request: its first output comes back aborted
    batch = client.generate([[5]], SamplingParams(max_new_tokens=2), n=3)
    assert len(batch.samples) == 3 and {s.finish_reason for s in batch.samples} == {"length"}
    bodies = _generate_bodies(fake)
    assert [b["sampling_params"].get("n", 1) for b in bodies] == [3, 1]  # only the missing sample again


def test_aborts_without_end_give_one_line(fake, client):
    fake.abort_next = [None] * 10  # every output aborted
    with pytest.raises(SGLangError) as err:
        client.generate([[5]], SamplingParams(max_new_tokens=2), n=2)
    assert "\n" not in str(err.value) and "aborted 3 times" in str(err.value)


def test_pause_with_abort_during_generation_is_survived(fake, client):
    """A weight update's pause(abort) aborts running requests: they are re-asked and wait for continue."""
    fake.delay_s = 0.2
    result = {}
    worker = threading.Thread(target=lambda: result.update(b=client.generate([[1], [2]], SamplingParams(max_new_tokens=2))))
    worker.start()
    deadline = time.monotonic() + 5
    while fake.in_flight < 2 and time.monotonic() < deadline:  # both requests running on the server
        time.sleep(0.005)
    client.pause_generation("abort")
    time.sleep(0.05)
    client.continue_generation()
    worker.join(10)
    assert len(result["b"].samples) == 2
    assert len(_generate_bodies(fake)) == 4  # each prompt asked twice


def test_groups_stream_in_completion_order_and_closing_cancels_the_rest(fake):
    fake.delay_s = 0.05
    with SGLangClient([fake.url], max_concurrency=2, **FAST) as c:
        it = c.iter_groups([[i] for i in range(12)], SamplingParams(max_new_tokens=1), n=2)
        first = next(it)
        assert len(first) == 2 and first[0].prompt_index == first[1].prompt_index
        it.close()
        time.sleep(0.2)
        sent = len(_generate_bodies(fake))
        time.sleep(0.2)
        assert sent == len(_generate_bodies(fake)) < 12  # nothing more after close
        assert len(c.generate([[1]], SamplingParams(max_new_tokens=1)).samples) == 1  # the client still works


def test_version_decides_the_weight_update_session():
    assert parse_version("0.5.21rc1") == (0, 5, 21) and parse_version("v0.4.10.post2") == (0, 4, 10)
    assert needs_weight_update_session("0.5.21") and needs_weight_update_session("0.5.23")
    assert not needs_weight_update_session("0.5.20") and not needs_weight_update_session("0.4.10")
    assert needs_weight_update_session("0.0.0.dev0")  # a source build: assume recent
    with FakeSGLang(version="0.5.23") as new, FakeSGLang(version="0.5.20", legacy_info_route=True) as old:
        with SGLangClient([new.url, old.url]) as c:
            assert c.needs_session(new.url) and not c.needs_session(old.url)
            assert ("/get_server_info", None) in old.requests  # found through the older route
            c.run(c.aio.open_weight_update())
            c.run(c.aio.close_weight_update())
        assert new.events == ["pause", "flush", "begin", "end", "continue"]
        assert old.events == ["pause", "flush", "continue"]  # 0.5.20 has no begin/end routes


def test_tensor_update_outside_a_session_is_refused_in_one_line(fake, client):
    with pytest.raises(SGLangError) as err:
        client.run(client.aio.update_weights_from_tensor(fake.url, ["eA=="]))
    assert "\n" not in str(err.value)
    assert "must run between begin_weight_update() and end_weight_update()" in str(err.value)


def test_fake_validates_like_sglang(fake):
    with httpx.Client(trust_env=False) as http:
        r = http.post(fake.url + "/update_weights_from_disk", json={"model_path": "/x", "modelpath": "/y"})
        assert r.status_code == 422 and "unknown field 'modelpath'" in r.text
        r = http.post(fake.url + "/update_weights_from_disk", json={"load_format": None})
        assert r.status_code == 422 and "field required: model_path" in r.text
        r = http.post(fake.url + "/init_weights_update_group",
                      json={"master_address": "h", "master_port": "1", "rank_offset": 1, "world_size": 2})
        assert r.status_code == 422 and "master_port" in r.text
        r = http.post(fake.url + "/generate", json={"input_ids": [1], "sampling_params": {"max_tokens": 3}})
        assert r.status_code == 400 and "max_tokens" in r.text


def test_control_calls_and_memory_tags(fake, client):
    assert client.health()
    client.release_memory_occupation()
    with pytest.raises(SGLangError, match="released"):
        client.generate([[1]], SamplingParams(max_new_tokens=1))
    client.resume_memory_occupation(["weights", "kv_cache"])
    client.resume_memory_occupation(["cuda_graph"])
    client.flush_cache()
    assert fake.events == ["release:weights,kv_cache,cuda_graph", "resume:weights,kv_cache", "resume:cuda_graph", "flush"]
    with pytest.raises(ValueError, match="unknown SGLang memory tags"):
        client.release_memory_occupation(["kv"])
    with pytest.raises(ValueError, match="rollout.sglang.urls"):
        SGLangClient(["127.0.0.1:30000"])
