"""Tests against SGLang's real server (sglang 0.5.23) on the CPU, launched by the project's launcher.

The server runs in its own environment, made by `bash launch/sglang_env.sh` (the README's test
command makes it and exports MEGATRON_RL_SGLANG_PYTHON). Without it these tests fail, naming that
command: CI must run them, so they never skip themselves.

Every launched server's log is read at teardown: the sgl_kernel import stand-in in that environment
(launch/sglang_cpu) must never have been called, so everything the server computed is SGLang's own.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent / "distributed"))  # dist_harness, hf_models
sys.path.insert(0, str(HERE.parent / "integration"))  # trainer_runs
sys.path.insert(0, str(ROOT / "launch" / "sglang_cpu"))  # the stand-in's CALL_MARKER (no sgl_kernel use here)


def _stand_in_marker() -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sgl_kernel_stand_in",
                                                  ROOT / "launch" / "sglang_cpu" / "sgl_kernel" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CALL_MARKER


CALL_MARKER = _stand_in_marker()


@pytest.fixture(scope="session")
def sglang_python() -> str:
    """The SGLang server environment's interpreter; a failure naming the fix when it is missing."""
    python = os.environ.get("MEGATRON_RL_SGLANG_PYTHON") or str(ROOT / ".venv-sglang" / "bin" / "python")
    if not os.path.exists(python):
        pytest.fail(f"no SGLang server environment at {python}: run `bash launch/sglang_env.sh` (the README's test "
                    "command `bash launch/dev.sh test` does) or set MEGATRON_RL_SGLANG_PYTHON", pytrace=False)
    os.environ["MEGATRON_RL_SGLANG_PYTHON"] = python  # the launcher's default interpreter from here on
    return python


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory):
    """Every test's server logs live under here; at the end none may show a stand-in call."""
    root = tmp_path_factory.mktemp("sglang-logs")
    yield root
    called = [f"{log}: {line.strip()}" for log in root.rglob("*.log")
              for line in log.read_text(errors="replace").splitlines() if CALL_MARKER in line]
    assert not called, f"the sgl_kernel stand-in was called (SGLang computed with a placeholder): {called[:3]}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The demo's model shape (configs/models/tiny-qwen2.yaml: Qwen2, 2 layers, hidden 64, tied,
    q/k/v bias) with random weights and the demo's character tokenizer, as an fp32 HF checkpoint;
    and its ModelConfig."""
    from real_server_lib import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2"))
