"""The interpreter is lenient (globals, types, loop-carried values) and cannot autotune; the GPU
compiler is strict. Compile representative kernel variants for sm_90 (no GPU needed: triton ships
ptxas), check they do not spill registers at the widest autotune blocks, and check the autotune
wrappers the GPU path uses (config pruning through the real Autotuner)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("kernels_compile_check.py")


def test_kernels_compile_for_sm90_without_spills():
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia").is_dir():
        pytest.skip("this triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    pruned = {(x["autotuner"], x["width"]): x["BLOCK_V"] for x in lines if "autotuner" in x}
    assert pruned[("n_cols", 300)] == [1024] and pruned[("n_cols_total", 151936)] == [1024, 2048, 4096, 8192]
    variants = [x for x in lines if "kernel" in x]
    assert len(variants) == 10
    for v in variants:
        assert v.get("LOCAL", 0) == 0 and v.get("STACK", 0) == 0, f"register spills: {v}"
