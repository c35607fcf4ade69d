#!/usr/bin/env python
"""Resharding throughput: Megatron TP shards -> full HF-named tensors (the weight-sync stream).

    python -m torch.distributed.run --nproc_per_node 2 benchmarks/bench_resharding.py [--model qwen2.5-0.5b]
        [--tp 2] [--bucket-mb 512] [--dtype bf16] [--repeats 3]

Measures `models.hf_io.iter_hf_buckets` on every rank of the TP group (all ranks gather; rank 0
would hand the buckets to the engine): GB/s of HF tensors produced (bytes of the full model over the
median wall time) and the peak extra resident memory while streaming (RSS sampled every 5 ms,
minus the RSS before the stream), against the target of the rollout issue: within one bucket of
the model's own size, i.e. the stream keeps at most about one bucket alive. Writes
benchmarks/results/resharding-<device>.{md,json} from rank 0. Works on CPU (gloo) and GPU (NCCL).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled on a thread."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.proc, self.peak = every_s, psutil.Process(), 0

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra(self) -> int:
        return self.peak - self.base


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-0.5b", help="a preset under configs/models/")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--bucket-mb", type=int, default=512)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from megatron_rl.config import CONFIGS_DIR
    from megatron_rl.config.loader import read_yaml
    from megatron_rl.config.schema import ModelConfig, ParallelConfig
    from megatron_rl.models.builder import build_model
    from megatron_rl.models.hf_io import iter_hf_buckets
    from megatron_rl.parallel import destroy_parallel, init_parallel

    preset = read_yaml(CONFIGS_DIR / "models" / f"{args.model}.yaml")
    model = ModelConfig(**{**preset["model"], "dtype": args.dtype})
    parallel = ParallelConfig(tensor=args.tp)
    init_parallel(parallel)
    rank = dist.get_rank()
    chunks = build_model("actor", model, parallel, perform_initialization=False)  # values do not matter here
    local_bytes = sum(p.numel() * p.element_size() for c in chunks for p in c.parameters())
    bucket_bytes = args.bucket_mb << 20

    times, extras, total = [], [], 0
    for _ in range(args.repeats):
        dist.barrier()
        with PeakRSS() as rss:
            start = time.perf_counter()
            total = 0
            for bucket in iter_hf_buckets(chunks, model, bucket_bytes):
                total += sum(t.numel() * t.element_size() for _, t in bucket)
                del bucket  # as a consumer must: otherwise two buckets live while the next one fills
            times.append(time.perf_counter() - start)
        extras.append(rss.extra)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"times": times, "extra": max(extras), "local_bytes": local_bytes})
    if rank == 0:
        median = statistics.median(max(g["times"][i] for g in gathered) for i in range(args.repeats))
        worst_extra = max(g["extra"] for g in gathered)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {psutil.cpu_count()} cores)"
        row = {
            "model": args.model, "dtype": args.dtype, "tp": args.tp, "bucket_mb": args.bucket_mb,
            "hf_bytes": total, "median_s": median, "GB_per_s": total / median / 1e9,
            "peak_extra_bytes": worst_extra, "target_bytes": bucket_bytes + total // args.tp,
            "per_rank_shard_bytes": local_bytes,
        }
        meta = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
                "date": datetime.date.today().isoformat(), "command": " ".join(["benchmarks/bench_resharding.py", *sys.argv[1:]]),
                "world_size": dist.get_world_size()}
        table = (
            f"# Resharding throughput ({meta['device']})\n\n"
            f"`{meta['command']}` under torchrun, world size {meta['world_size']}; torch {meta['torch']}, {meta['date']}.\n\n"
            "| model | dtype | TP | bucket MiB | HF tensors GB | median s | GB/s | peak extra RSS MiB | per-rank shard MiB |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
            f"| {row['model']} | {row['dtype']} | {row['tp']} | {row['bucket_mb']} | {total / 1e9:.3f} | {median:.3f} | "
            f"{row['GB_per_s']:.2f} | {worst_extra / 2**20:.0f} | {local_bytes / 2**20:.0f} |\n\n"
            "Peak extra RSS: the largest rise of any rank's resident memory while streaming, over the RSS\n"
            "before it (sampled every 5 ms). The rollout issue's target is one bucket beyond the model's own\n"
            "size; the stream holds at most one bucket of full tensors plus one tensor's TP gather.\n"
        )
        print(table)
        RESULTS_DIR.mkdir(exist_ok=True)
        tag = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name().replace(" ", "-").lower()
        (RESULTS_DIR / f"resharding-{tag}.md").write_text(table)
        (RESULTS_DIR / f"resharding-{tag}.json").write_text(json.dumps({**meta, **row}, indent=2))
    destroy_parallel()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
