"""Helpers for the launch-script tests: run a script with bash in a clean environment, with fake
`nvidia-smi` / `scontrol` / `srun` on PATH where a test asks for them (the `fake_bin` fixture)."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# variables the scripts read: a developer's shell (or a SLURM job running the suite) must not leak in
_SCRIPT_VARS = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "GPUS_PER_NODE", "CUDA_VISIBLE_DEVICES",
                "PYTHON", "MEGATRON_RL_ROOT")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in _SCRIPT_VARS and not k.startswith(("SLURM_", "SGLANG_"))}
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def run_script(script: str, *args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / script), *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def commands(stdout: str) -> list[list[str]]:
    """The argv of every `+ cmd ...` line a script printed (shell-quoted, as it would run)."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The script failed with exit code 2 and exactly one `error:` line on stderr; that line."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not commands(proc.stdout), proc.stdout  # nothing was about to run
    return lines[0]


@pytest.fixture
def fake_bin(tmp_path):
    """A directory of fake commands to put first on PATH; `gpus(n)` makes `nvidia-smi -L` list n H100s."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    class FakeBin:
        path = bin_dir

        def add(self, name: str, body: str) -> None:
            f = bin_dir / name
            f.write_text("#!/usr/bin/env bash\n" + body)
            f.chmod(0o755)

        def gpus(self, n: int) -> None:
            self.add("nvidia-smi", f'[ "$1" = -L ] || exit 9\nfor ((i = 0; i < {n}; i++)); do\n'
                                   '  echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-0000000$i)"\ndone\n')

        def env(self, **extra: str) -> dict:
            return clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **extra)

    return FakeBin()
