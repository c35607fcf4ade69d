"""Running `megatron-rl train` for the trainer tests: the demo config shrunk to a few seconds a step,
on 2 CPU ranks (the CLI launches them with torchrun, as a user's run would)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from megatron_rl.config import CONFIGS_DIR
from megatron_rl.data.synthetic import prepare_demo_data

# random-initialised tiny model (no SFT), 4 prompts x 4 samples, 2 mini-batches, short answers
SMALL = [
    "algorithm.prompts_per_step=4", "algorithm.mini_batch_prompts=2", "rollout.n_samples_per_prompt=4",
    "rollout.sampling.max_new_tokens=4", "rollout.eval_sampling.max_new_tokens=4", "actor.micro_batch_size=4",
    "critic.micro_batch_size=4", "data.eval_max_prompts=8", "trainer.eval_every=null", "checkpoint.save_every=null",
    "reward.workers=1", "logging.plot=false",
]


def write_config(tmp: Path, preset: str = "grpo", extra_yaml: str = "") -> Path:
    """The demo config with an algorithm preset on top, writing under tmp; returns its path."""
    prepare_demo_data(tmp / "data")
    path = tmp / "run.yaml"
    path.write_text(f"include: [{CONFIGS_DIR / 'demo.yaml'}, algorithms/{preset}.yaml]\n"
                    f"run: {{output_dir: {tmp}}}\n{extra_yaml}")
    return path


def train_command(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "megatron_rl.cli", "train", str(config), *SMALL, *overrides]


def run_train(config: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(train_command(config, *overrides), capture_output=True, text=True, timeout=timeout,
                          env=env)


def start_train(config: Path, *overrides: str, log: Path) -> subprocess.Popen:
    """In its own session, so the test can kill the whole job (torchrun and its ranks) at once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(train_command(config, *overrides), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank (torchrun starts its workers in sessions of their own)."""
    import psutil

    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    proc.wait(timeout=30)


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the condition held")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.2)


def metrics(out_dir: Path, kind: str = "train") -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if r["kind"] == kind]


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"
