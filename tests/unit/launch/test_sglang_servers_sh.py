"""launch/sglang_servers.sh: the server commands it prints (read back with sglang's own CLI parser and
compared with the trainer's launcher), the router command, the trainer overrides (loaded by the config
loader), the one-line failures, and a real run against fake SGLang servers (tests/unit/rollout)."""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from free_ports import free_port_range
from launch_helpers import ROOT, commands, one_error_line, run_script

from megatron_rl.rollout.sglang_launch import router_command, server_command

SCRIPT = "launch/sglang_servers.sh"
FAKE_SERVER = f"{sys.executable} {ROOT / 'tests/unit/rollout/fake_sglang.py'}"


def overrides_of(stdout: str) -> list[str]:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("trainer overrides: ")]
    return line[len("trainer overrides: "):].split()


def resolved_sglang_config(overrides: list[str]) -> dict:
    """What the trainer would see: the overrides through `megatron-rl validate` on the demo config."""
    out = subprocess.run([sys.executable, "-m", "megatron_rl", "validate", "configs/demo.yaml", *overrides,
                          "--world-size", "2"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)["rollout"]


def test_server_commands_parse_as_sglang_parses_them(fake_bin, tmp_path):
    from sglang.srt.server_args import ServerArgs

    fake_bin.gpus(6)
    model = tmp_path / "ckpt"
    model.mkdir()
    proc = run_script(SCRIPT, "--dry-run", "--num-servers", "2", "--tp-size", "2", "--base-gpu-id", "2",
                      "--base-port", "31000", "--mem-fraction", "0.7", "--advertise-host", "node3", str(model),
                      "--", "--dtype", "bfloat16", env=fake_bin.env())
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    assert len(cmds) == 2
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    for i, cmd in enumerate(cmds):
        assert cmd[:3] == [sys.executable, "-m", "sglang.launch_server"]
        args = parser.parse_args(cmd[3:])
        assert (args.model_path, args.host, args.port) == (str(model), "0.0.0.0", 31000 + i)
        assert (args.tp_size, args.dp_size, args.base_gpu_id) == (2, 1, 2 + 2 * i)
        assert args.mem_fraction_static == 0.7 and args.dtype == "bfloat16"
        # the same flags the trainer's own launcher gives a server (rollout/sglang_launch.py)
        assert cmd == server_command(str(model), port=31000 + i, tp_size=2, base_gpu_id=2 + 2 * i, mem_fraction=0.7,
                                     enable_memory_saver=False, host="0.0.0.0", extra_args=["--dtype", "bfloat16"],
                                     launcher=cmd[:3])
    overrides = overrides_of(proc.stdout)
    assert overrides[:2] == ["rollout.engine=sglang", "rollout.placement=disaggregated"]
    rollout = resolved_sglang_config(overrides)
    assert rollout["engine"] == "sglang" and rollout["placement"] == "disaggregated"
    assert rollout["sglang"]["urls"] == ["http://node3:31000", "http://node3:31001"]
    assert rollout["sglang"]["router_url"] is None


def fake_router_module(tmp_path) -> str:
    pkg = tmp_path / "pylib" / "sglang_router"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "launch_router.py").write_text("")
    return str(tmp_path / "pylib")


def test_router_over_this_node_and_the_worker_hosts(fake_bin, tmp_path):
    fake_bin.gpus(2)
    (tmp_path / "m").mkdir()
    env = fake_bin.env(PYTHONPATH=fake_router_module(tmp_path))
    proc = run_script(SCRIPT, "--dry-run", "--num-servers", "2", "--router", "--worker-hosts", "gpu02,gpu03",
                      "--router-policy", "round_robin", "--advertise-host", "gpu01", str(tmp_path / "m"), env=env)
    assert proc.returncode == 0, proc.stderr
    *servers, router = commands(proc.stdout)
    assert len(servers) == 2
    urls = [f"http://{h}:{30010 + i}" for h in ("gpu01", "gpu02", "gpu03") for i in range(2)]
    assert router == router_command(urls, port=30000, host="0.0.0.0", policy="round_robin", launcher=router[:3])
    assert router[:3] == [sys.executable, "-m", "sglang_router.launch_router"]
    rollout = resolved_sglang_config(overrides_of(proc.stdout))
    assert rollout["sglang"]["urls"] == urls and rollout["sglang"]["router_url"] == "http://gpu01:30000"

    only = run_script(SCRIPT, "--dry-run", "--router", "--no-local-servers", "--worker-hosts", "gpu02",
                      "--advertise-host", "gpu01", "--router-port", "31999", env=env)
    assert only.returncode == 0, only.stderr
    (router,) = commands(only.stdout)
    assert router[3:] == ["--worker-urls", "http://gpu02:30010", "--host", "0.0.0.0", "--port", "31999",
                          "--policy", "cache_aware"]


def test_mistakes_fail_in_one_line(fake_bin, tmp_path):
    fake_bin.gpus(4)
    (tmp_path / "m").mkdir()
    model = str(tmp_path / "m")
    env = fake_bin.env()
    line = one_error_line(run_script(SCRIPT, "--dry-run", "--num-servers", "2", "--tp-size", "2", "--base-gpu-id", "1",
                                     model, env=env))
    assert "need GPUs 0..4, but 4 GPU(s) are visible" in line
    line = one_error_line(run_script(SCRIPT, "--dry-run", "--router", model, env=env))  # no sglang_router here
    assert "sglang_router is not installed" in line and "pip install sglang-router" in line
    assert "--tp-size after --" in one_error_line(run_script(SCRIPT, "--dry-run", model, "--", "--tp-size", "2", env=env))
    assert "is not a directory" in one_error_line(run_script(SCRIPT, "--dry-run", str(tmp_path / "no/such/dir"), env=env))
    assert "no MODEL_PATH" in one_error_line(run_script(SCRIPT, "--dry-run", env=env))
    assert "--worker-hosts needs --router" in one_error_line(run_script(SCRIPT, "--dry-run", "--worker-hosts", "h", model,
                                                                        env=env))
    with socket.socket() as busy:  # something already listens on the server's port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_error_line(run_script(SCRIPT, "--dry-run", "--base-port", str(port), model, env=env))
    assert f"port {port}" in line and "already in use" in line


def read_until(proc, marker: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith(marker):
            return lines
    raise AssertionError(f"no {marker!r} line; got {lines}; stderr {proc.stderr.read() if proc.poll() is not None else ''}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_starts_servers_waits_for_health_and_stops_them_on_sigterm(fake_bin, tmp_path):
    fake_bin.gpus(2)
    (tmp_path / "m").mkdir()
    base = free_port_range(2)
    env = fake_bin.env(SGLANG_LAUNCH_SERVER=FAKE_SERVER)
    proc = subprocess.Popen(["bash", str(ROOT / SCRIPT), "--num-servers", "2", "--base-port", str(base),
                             "--host", "127.0.0.1", "--log-dir", str(tmp_path / "logs"), str(tmp_path / "m")],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = read_until(proc, "trainer overrides: ", timeout=60)
        assert f"sglang server 1 ready: http://127.0.0.1:{base + 1}" in lines
        urls = [f"http://127.0.0.1:{base + i}" for i in range(2)]
        assert overrides_of("\n".join(lines))[2] == f"rollout.sglang.urls=[{urls[0]},{urls[1]}]"
        for url in urls:  # the servers run, with what the script gave them
            info = get_json(url + "/get_server_info")
            assert info["model_path"] == str(tmp_path / "m") and info["dp_size"] == 1
        assert (tmp_path / "logs/sglang-server-1.log").read_text().startswith("fake sglang: model")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        for url in urls:  # and are gone with it
            with pytest.raises(OSError):
                get_json(url + "/get_server_info")
    finally:  # on a failure above: SIGTERM first, so that the script stops the servers it started
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def test_a_server_that_dies_at_start_is_reported_with_its_log(fake_bin, tmp_path):
    fake_bin.gpus(1)
    (tmp_path / "m").mkdir()
    env = fake_bin.env(SGLANG_LAUNCH_SERVER=FAKE_SERVER)
    proc = run_script(SCRIPT, "--base-port", str(free_port_range(1)), "--log-dir", str(tmp_path / "logs"),
                      str(tmp_path / "m"), "--", "--fake-exit-code", "3", env=env, timeout=60)
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: sglang server 0 exited with code 3 before answering")
    assert str(tmp_path / "logs/sglang-server-0.log") in line and "CUDA out of memory" in line
