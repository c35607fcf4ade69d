"""benchmarks/bench_kernels.py --cpu-smoke: the whole benchmark script on tiny CPU shapes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_bench_cpu_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--cpu-smoke",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "kernels-cpu-smoke.json").read_text())
    assert result["smoke"] and (tmp_path / "kernels-cpu-smoke.md").exists()
    impls = {(r["workload"], r["impl"]) for r in result["rows"]}
    for workload, impl in [("logprob+entropy", "megatron_rl.kernels (triton)"), ("logprob+entropy", "torch eager"),
                           ("logprob+entropy", "torch.compile"),
                           ("fused lm_head", "megatron_rl.kernels fused lm_head (triton)"),
                           ("clipped policy loss", "clipped_policy_loss (triton, fused)")]:
        assert (workload, impl) in impls
    assert all(r.get("fwd_ms") is not None and r.get("fwd_bwd_ms") is not None for r in result["rows"])
    assert all(line.startswith("[not evaluated: CPU smoke]") for line in result["targets"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would benchmark")
def test_bench_without_gpu_says_so_in_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py")], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stdout.strip().startswith("no CUDA device: benchmarks need a GPU") and "\n" not in proc.stdout.strip()
