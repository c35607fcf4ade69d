"""Launching SGLang servers: the command lines, and the health wait against the fake server (as a
thread and as launched processes), a closed port and a process that dies at start."""
import subprocess
import sys
import time

import pytest
from fake_sglang import FAKE_LAUNCHER as FAKE
from fake_sglang import FakeSGLang, free_port_pair

from megatron_rl.config.schema import SGLangConfig
from megatron_rl.rollout.sglang_launch import (SGLangLaunchError, SGLangServers, Target, check_url, probe,
                                               router_command, server_command, server_commands, wait_healthy)

PY = sys.executable


def test_server_command_line():
    cmd = server_command("/ckpt/qwen", port=30011, tp_size=2, base_gpu_id=2, mem_fraction=0.7, seed=5,
                         extra_args=["--dtype", "bfloat16"])
    assert " ".join(cmd) == (
        f"{PY} -m sglang.launch_server --model-path /ckpt/qwen --host 127.0.0.1 --port 30011 --tp-size 2 "
        "--dp-size 1 --base-gpu-id 2 --mem-fraction-static 0.7 --enable-memory-saver --random-seed 5 --dtype bfloat16")
    bare = server_command("/m", port=1, enable_memory_saver=False)
    assert "--enable-memory-saver" not in bare and "--random-seed" not in bare


def test_server_commands_from_config_place_servers_on_consecutive_gpus_and_ports():
    cfg = SGLangConfig(num_servers=3, tp_size=2, base_port=31000, mem_fraction=0.5, enable_memory_saver=False,
                       device="cuda")
    out = server_commands(cfg, "/m", host="0.0.0.0", gpu_offset=1, seed=10)
    assert [u for u, _ in out] == ["http://127.0.0.1:31000", "http://127.0.0.1:31001", "http://127.0.0.1:31002"]
    for i, (_, cmd) in enumerate(out):
        flags = dict(zip(cmd[3::2], cmd[4::2]))
        assert flags["--port"] == str(31000 + i) and flags["--base-gpu-id"] == str(1 + 2 * i)
        assert flags["--tp-size"] == "2" and flags["--dp-size"] == "1" and flags["--host"] == "0.0.0.0"
        assert flags["--mem-fraction-static"] == "0.5" and flags["--random-seed"] == str(10 + i)


def test_router_command_line():
    cmd = router_command(["http://127.0.0.1:30010", "http://127.0.0.1:30011"], port=30000)
    assert " ".join(cmd) == (f"{PY} -m sglang_router.launch_router --worker-urls http://127.0.0.1:30010 "
                             "http://127.0.0.1:30011 --host 127.0.0.1 --port 30000 --policy cache_aware")


@pytest.mark.parametrize("url, hint", [("127.0.0.1:30000", "not an http://host:port URL"),
                                       ("http://node1", "not an http://host:port URL"),
                                       ("http://node1:30000/generate", "has a path")])
def test_bad_urls_are_one_line_naming_the_key(url, hint):
    with pytest.raises(ValueError) as err:
        check_url(url)
    assert str(err.value).startswith("rollout.sglang.urls: ") and hint in str(err.value) and "\n" not in str(err.value)
    assert check_url("http://node1:30000/") == "http://node1:30000"


def test_health_wait_sees_a_server_through_its_startup_503s():
    with FakeSGLang(unhealthy_probes=3) as fake:
        wait_healthy([Target(fake.url)], timeout_s=10, poll_s=0.01)
        assert sum(p == "/health_generate" for p, _ in fake.requests) == 4


def test_health_wait_timeout_on_a_closed_port_is_one_line():
    start = time.monotonic()
    with pytest.raises(SGLangLaunchError) as err:
        SGLangServers.attach(["http://127.0.0.1:9"], health_timeout_s=0.3)
    assert time.monotonic() - start < 3
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("SGLang server http://127.0.0.1:9 not healthy after 0.3s (last: connection refused)")
    assert "check rollout.sglang.urls" in msg


def test_attach_to_running_servers(tmp_path):
    with FakeSGLang() as a, FakeSGLang() as b:
        servers = SGLangServers.attach([a.url + "/", b.url], health_timeout_s=5)
        assert servers.server_urls == [a.url, b.url] and servers.generate_url is None
        servers.shutdown()  # nothing of ours to stop
        assert probe(a.url)[0]
    with pytest.raises(ValueError, match="rollout.sglang.urls is empty"):
        SGLangServers.attach([])


def test_a_server_that_dies_at_start_names_its_exit_code_last_log_line_and_log(tmp_path):
    cfg = SGLangConfig(num_servers=1, base_port=free_port_pair(), health_timeout_s=20)
    with pytest.raises(SGLangLaunchError) as err:
        SGLangServers.launch(cfg, "/no/model", log_dir=str(tmp_path), launcher=FAKE + ["--fake-exit-code", "3"])
    msg = str(err.value)
    assert "\n" not in msg and "exited with code 3 before it was healthy" in msg
    assert "CUDA out of memory" in msg and str(tmp_path / "sglang-server-0.log") in msg
    assert "--model-path /no/model" in (tmp_path / "sglang-server-0.log").read_text()  # the command is logged


def test_a_launched_server_that_stays_unhealthy_times_out_and_is_stopped(tmp_path):
    cfg = SGLangConfig(num_servers=1, base_port=free_port_pair(), health_timeout_s=0.5)
    launcher = FAKE + ["--fake-startup-s", "30"]
    with pytest.raises(SGLangLaunchError) as err:
        SGLangServers.launch(cfg, "/m", log_dir=str(tmp_path), launcher=launcher)
    assert "not healthy after 0.5s" in str(err.value) and "rollout.sglang.health_timeout_s" in str(err.value)
    assert str(tmp_path / "sglang-server-0.log") in str(err.value)
    # the failed launch stopped its process: nothing of it is left running
    out = subprocess.run(["pgrep", "-f", "--", f"--port {cfg.base_port} "], capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_launch_two_servers_then_shutdown_kills_them(tmp_path):
    port = free_port_pair()
    cfg = SGLangConfig(num_servers=2, tp_size=2, base_port=port, health_timeout_s=20, device="cuda")
    servers = SGLangServers.launch(cfg, "/m", log_dir=str(tmp_path), launcher=FAKE, router=False)
    try:
        assert servers.server_urls == [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
        assert all(probe(u)[0] for u in servers.server_urls)
        log = (tmp_path / "sglang-server-1.log").read_text()
        assert f"--port {port + 1} --tp-size 2 --dp-size 1 --base-gpu-id 2" in log
        procs = [t.process for t in servers.targets]
    finally:
        servers.shutdown(grace_s=5)
    assert all(p.poll() is not None for p in procs)
    assert not any(probe(u, timeout_s=0.5)[0] for u in servers.server_urls)


def test_launch_refuses_a_busy_port(tmp_path):
    with FakeSGLang() as fake:
        port = int(fake.url.rsplit(":", 1)[1])
        cfg = SGLangConfig(num_servers=1, base_port=port)
        with pytest.raises(SGLangLaunchError, match=f"port {port} on 127.0.0.1 is already in use"):
            SGLangServers.launch(cfg, "/m", log_dir=str(tmp_path), launcher=FAKE)
