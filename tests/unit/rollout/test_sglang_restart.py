"""Dead and hung SGLang servers mid-rollout: fake servers run as real processes, one is killed
(SIGKILL) or made to hang while a rollout runs; the engine restarts it (same command, port and log)
and the rollout completes with every sample, the restarted server's weights handled by the policy
in docs/rollout.md; max_restarts exhausted, attached servers and stale weights fail in one line."""
import logging
import os
import signal
import threading
import time

import httpx
import pytest
import torch
from fake_sglang import FAKE_LAUNCHER, FakeSGLang, free_port_pair

from megatron_rl.config.schema import SGLangConfig
from megatron_rl.rollout.sglang_client import SGLangError, SGLangStaleWeightsError
from megatron_rl.rollout.sglang_engine import SGLangEngine
from megatron_rl.rollout.sglang_launch import probe
from megatron_rl.rollout.types import SamplingParams

FAST = dict(backoff_s=0.01, max_backoff_s=0.05)
PARAMS = SamplingParams(max_new_tokens=3)
PROMPTS = [[i] for i in range(8)]
LOGGER = "megatron_rl.rollout.sglang_launch"


def _engine(tmp_path, *, num_servers=1, delay_s=0.0, launcher_args=(), **cfg):
    cfg = SGLangConfig(**{"num_servers": num_servers, "base_port": free_port_pair(), "health_timeout_s": 20,
                          "router": False, "max_retries": 2, **cfg})
    launcher = FAKE_LAUNCHER + ["--fake-delay-s", str(delay_s), *launcher_args]
    return SGLangEngine(cfg, "/ckpt", log_dir=str(tmp_path), launcher=launcher, client_kwargs=FAST)


def _fake(url, path="/fake_state", body=None):
    if body is None:
        return httpx.get(url + path, trust_env=False, timeout=10).json()
    return httpx.post(url + path, json=body, trust_env=False, timeout=10).json()


def _in_background(fn):
    out = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001  handed to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _kill_when_busy(engine, i):
    """SIGKILL server i once it has requests in flight (mid-rollout); returns the old pid."""
    url, proc = engine.server_urls[i], engine.servers.targets[i].process
    deadline = time.monotonic() + 10
    while _fake(url)["in_flight"] == 0:
        assert time.monotonic() < deadline, "the rollout never reached the server"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    return proc.pid


def _complete(batch, prompts=PROMPTS, n=2, version=0):
    assert len(batch.samples) == len(prompts) * n
    assert [len(g) for g in batch.groups()] == [n] * len(prompts)
    assert all(len(s.response_ids) == PARAMS.max_new_tokens for s in batch.samples)
    assert {s.weight_version for s in batch.samples} == {version}


def test_a_hung_server_counts_as_dead_after_the_retries(tmp_path, caplog):
    engine = _engine(tmp_path, request_timeout_s=1.0, max_retries=1)
    try:
        caplog.set_level(logging.WARNING, logger=LOGGER)
        url = engine.server_urls[0]
        old_pid = engine.servers.targets[0].process.pid
        _fake(url, "/fake_config", {"hang": True})  # requests and health probes get no reply
        start = time.monotonic()
        batch = engine.generate(PROMPTS[:2], PARAMS, n=2)
        _complete(batch, PROMPTS[:2])
        assert time.monotonic() - start < 15
        assert (f"sglang server 0 ({url}) hung (alive, but its health probe got no reply within 1s); "
                f"restarting (restart 1 of 3), log: {tmp_path / 'sglang-server-0.log'}") in caplog.text
        assert engine.servers.targets[0].process.pid != old_pid
    finally:
        engine.shutdown()


def test_max_restarts_exhausted_fails_in_one_line(tmp_path):
    engine = _engine(tmp_path, max_restarts=1)
    try:
        url = engine.server_urls[0]
        os.kill(engine.servers.targets[0].process.pid, signal.SIGKILL)
        _complete(engine.generate(PROMPTS[:2], PARAMS, n=2), PROMPTS[:2])  # restart 1 of 1
        os.kill(engine.servers.targets[0].process.pid, signal.SIGKILL)
        with pytest.raises(SGLangError) as err:
            engine.generate(PROMPTS[:2], PARAMS, n=2)
        msg = str(err.value)
        assert "\n" not in msg
        assert msg.startswith(f"sglang server 0 ({url}) died (exit code -9) after 1 restart "
                              "(rollout.sglang.max_restarts 1); log: ")
        assert "raise rollout.sglang.max_restarts" in msg and "cannot connect" in msg  # and what the request saw
    finally:
        engine.shutdown()


def test_an_attached_server_cannot_be_restarted_and_says_so_in_one_line():
    fake = FakeSGLang().start()
    engine = SGLangEngine(SGLangConfig(urls=[fake.url], health_timeout_s=5, max_retries=1), client_kwargs=FAST)
    try:
        fake.stop()
        with pytest.raises(SGLangError) as err:
            engine.generate([[1]], PARAMS)
        msg = str(err.value)
        assert "\n" not in msg
        assert msg.startswith(f"SGLang server {fake.url} was attached (rollout.sglang.urls), not launched by us, "
                              "so it cannot be restarted")
    finally:
        engine.shutdown()


def test_a_failure_of_a_live_healthy_server_is_not_a_restart(tmp_path):
    engine = _engine(tmp_path, max_retries=1)
    try:
        _fake(engine.server_urls[0], "/fake_config", {"fail_next": [503] * 5})
        with pytest.raises(SGLangError, match="HTTP 503"):
            engine.generate([[1]], PARAMS)
        assert engine.restart_count == 0
    finally:
        engine.shutdown()


def _synced(engine, version):
    """What a transport's sync leaves: every server reports the version, the engine has it."""
    for url in engine.server_urls:
        _fake(url, "/fake_config", {"weight_version": str(version)})
    engine.weight_version = version


def test_after_a_sync_the_restarted_server_sits_out_until_the_next_sync(tmp_path, caplog):
    engine = _engine(tmp_path, num_servers=2, delay_s=0.3)
    try:
        caplog.set_level(logging.WARNING)
        _synced(engine, 3)
        thread, out = _in_background(lambda: engine.generate(PROMPTS, PARAMS, n=2))
        _kill_when_busy(engine, 1)
        thread.join(30)
        assert "error" not in out, out.get("error")
        _complete(out["result"], version=3)  # finished on server 0, which has version 3
        stale = engine.server_urls[1]
        assert engine.needs_weight_sync
        assert _fake(stale)["generate_requests"] == 0  # the restarted process served nothing
        assert f"sglang server {stale} has the checkpoint's weights after its restart, not version 3" in caplog.text

        _complete(engine.generate(PROMPTS, PARAMS, n=2), version=3)
        assert _fake(stale)["generate_requests"] == 0
        _synced(engine, 4)  # the next sync reaches every server, the restarted one too
        assert not engine.needs_weight_sync
        _complete(engine.generate(PROMPTS, PARAMS, n=2), version=4)
        assert _fake(stale)["generate_requests"] > 0
    finally:
        engine.shutdown()


def test_after_a_sync_a_restart_with_no_current_server_left_fails_the_rollout_in_one_line(tmp_path):
    engine = _engine(tmp_path)
    try:
        _synced(engine, 3)
        os.kill(engine.servers.targets[0].process.pid, signal.SIGKILL)
        with pytest.raises(SGLangStaleWeightsError) as err:
            engine.generate(PROMPTS[:2], PARAMS, n=2)
        msg = str(err.value)
        assert "\n" not in msg
        assert msg.startswith(f"SGLang server {engine.server_urls[0]} was restarted and has the checkpoint's "
                              "weights, not weight version 3")
        assert "sync the weights (every server gets them) and run the rollout again" in msg
        assert engine.needs_weight_sync and engine.restart_count == 1
        _synced(engine, 4)  # what the trainer does next: sync, then the rollout again
        _complete(engine.generate(PROMPTS[:2], PARAMS, n=2), PROMPTS[:2], version=4)
    finally:
        engine.shutdown()


def test_the_nccl_group_is_formed_again_after_a_restart(tmp_path):
    """The restarted server left the weight-update group: the next push forms a new one (new name,
    the same fixed port) and every server, the restarted one included, gets the weights."""
    pytest.importorskip("sglang.srt.weight_sync.tensor_bucket")
    from megatron_rl.weight_sync.nccl import NcclWeightSync

    engine = _engine(tmp_path, num_servers=2, launcher_args=["--fake-join-groups"])
    try:
        port = free_port_pair()
        sync = NcclWeightSync(engine, backend="gloo", master_address="127.0.0.1", master_port=port, timeout_s=60)
        first = [[("a", torch.randn(3, 2)), ("b", torch.arange(4, dtype=torch.int32))]]
        sync.push(first, version=1)
        assert sync.group_name == sync.base_group_name
        os.kill(engine.servers.targets[1].process.pid, signal.SIGKILL)
        _complete(engine.generate(PROMPTS, PARAMS, n=2), version=1)  # on server 0; server 1 restarted, stale
        second = [[("a", torch.randn(3, 2)), ("b", torch.arange(4, 8, dtype=torch.int32))]]
        sync.push(second, version=2)
        assert sync.group_name == sync.base_group_name + "_r1" and not engine.needs_weight_sync
        for url in engine.server_urls:
            state = _fake(url)
            assert state["weight_version"] == "2"
            assert state["weights"]["b"]["values"] == [4.0, 5.0, 6.0, 7.0]
        survivor, restarted = (_fake(u)["events"] for u in engine.server_urls)
        update = ["pause", "flush", "begin", "update_distributed", "update_distributed", "end", "continue"]
        assert survivor == ["init_group", *update, "destroy_group", "init_group", *update]  # the old group dropped
        assert restarted == ["destroy_group", "init_group", *update]  # (a group it never had: ignored)
        _complete(engine.generate(PROMPTS, PARAMS, n=2), version=2)
    finally:
        engine.shutdown()
