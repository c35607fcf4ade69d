"""Real SGLang servers on the CPU: launch/sglang_servers.sh with sglang-router 0.3.2 (PyPI) in front of
two servers, stopped by SIGTERM with their /dev/shm files removed; and a launched server killed in
the middle of a rollout, restarted by the engine, resynced (its disk weights reloaded) and its
requests sent again."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from megatron_rl.rollout.types import SamplingParams
from real_server_lib import ROOT_DIR, free_port, launch_engine


def _shm_names() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(("sglang_", "sgl_shm_", "sem.mp-"))}


def test_servers_script_runs_two_cpu_servers_behind_the_router(sglang_python, tiny_model, server_logs):
    from megatron_rl.rollout.sglang_client import SGLangClient

    base, router_port = free_port(2), free_port()
    logs = server_logs / "script"
    before = _shm_names()
    proc = subprocess.Popen(
        ["bash", str(ROOT_DIR / "launch/sglang_servers.sh"), "--device", "cpu", "--num-servers", "2",
         "--base-port", str(base), "--router", "--router-port", str(router_port), "--router-policy", "round_robin",
         "--log-dir", str(logs),
         "--health-timeout", "240", tiny_model[0], "--", "--dtype", "float32"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHON": sglang_python},
        start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:  # until it prints the trainer's overrides: every process is healthy
            lines.append(line.rstrip())
            if line.startswith("trainer overrides: ") or line.startswith("error:"):
                break
        assert lines and lines[-1].startswith("trainer overrides: "), "\n".join(lines)
        urls = [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
        assert f"rollout.sglang.urls=[{','.join(urls)}]" in lines[-1]
        assert f"rollout.sglang.router_url=http://127.0.0.1:{router_port}" in lines[-1]
        client = SGLangClient(urls, generate_url=f"http://127.0.0.1:{router_port}")
        try:
            batch = client.generate([[5, 6, 7], [8, 9], [10, 11, 12]] * 4, SamplingParams(max_new_tokens=4), n=2)
            assert len(batch.samples) == 24 and all(1 <= len(s.response_ids) <= 4 for s in batch.samples)
            assert all(client.server_info(u)["device"] == "cpu" for u in urls)
        finally:
            client.close()
        served = [sum(ln.count('"POST /generate HTTP/1.1" 200') for ln in (logs / f"sglang-server-{i}.log").open())
                  for i in range(2)]
        assert sum(served) == 12 and min(served) > 0, served  # round robin: both served
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        rest = proc.communicate(timeout=90)[0]
    assert proc.returncode in (143, 130), rest
    assert _shm_names() <= before, f"left in /dev/shm: {_shm_names() - before}"


def test_a_server_killed_mid_rollout_is_restarted_resynced_and_its_requests_sent_again(
        sglang_python, tiny_model, server_logs, tmp_path):
    from megatron_rl.models.hf_io import bucketize
    from megatron_rl.weight_sync.disk import DiskWeightSync
    from safetensors.torch import load_file

    engine = launch_engine(tiny_model[0], server_logs / "restart", placement="disaggregated", weight_sync="disk",
                           max_restarts=1, request_timeout_s=60, max_retries=1)
    try:
        weights = load_file(f"{tiny_model[0]}/model.safetensors")
        weights = {k: v * 1.1 if k.endswith("norm.weight") else v for k, v in weights.items()}  # version 1
        DiskWeightSync(engine, str(tmp_path / "w")).push(bucketize(iter(weights.items()), 1 << 20), version=1,
                                                         model=tiny_model[1])
        greedy = SamplingParams(temperature=0.0, max_new_tokens=128)
        prompts = [[5, 6, 7, 8], [9, 10, 11], [20, 21, 22]] * 6
        want = [s.response_ids for s in engine.generate(prompts, greedy).samples]
        target = engine.servers.targets[0]
        pid, log_path = target.process.pid, Path(target.log_path)
        seen = log_path.stat().st_size
        killed = threading.Event()

        def kill_once_prefilled():  # SIGKILL as soon as the server has started on this rollout
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with log_path.open("rb") as f:
                    f.seek(seen)
                    if b"Prefill batch" in f.read():
                        os.killpg(pid, signal.SIGKILL)
                        killed.set()
                        return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_once_prefilled)
        start = time.monotonic()
        killer.start()
        batch = engine.generate(prompts, greedy)
        killer.join()
        assert killed.is_set() and engine.servers.restart_count == 1
        assert engine.servers.targets[0].process.pid != pid
        # the restarted server reloaded version 1 from disk, and the re-sent requests came back the same
        assert {s.weight_version for s in batch.samples} == {1}
        assert [s.response_ids for s in batch.samples] == want
        log = (server_logs / "restart" / "sglang" / "sglang-server-0.log").read_text()
        assert log.count("POST /update_weights_from_disk") == 2, "the restarted server was not resynced"
        print(f"killed, restarted, resynced and re-sent in {time.monotonic() - start:.1f} s")
    finally:
        engine.shutdown()
