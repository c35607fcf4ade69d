#!/usr/bin/env python
"""Weight sync into SGLang's real server on the CPU: GB/s of HF tensors through the tensor transport
(flattened buckets in /dev/shm files, /update_weights_from_tensor inside a begin/end weight update)
and the disk transport (safetensors written, /update_weights_from_disk), beside a plain memory copy
of the same tensors measured in the same run.

    MEGATRON_RL_SGLANG_PYTHON=.venv-sglang/bin/python python benchmarks/bench_weight_sync_real_server.py

A random Qwen2-shaped model (hidden 1024, 8 layers, vocab 32000, fp32: ~0.6 GB) and the character
tokenizer are written to a temporary directory; one server (our launcher, CPU flags, fp32) loads it.
Each transport pushes the whole state dict `--repeats` times (median reported; the first push is
also shown, it pays for one-time set-up). Results: benchmarks/results/weight-sync-cpu-real-server.{md,json}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def make_checkpoint(out: Path, hidden: int, layers: int, vocab: int) -> dict:
    import transformers

    from megatron_rl.data.synthetic import make_char_tokenizer

    config = transformers.Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3,
                                      num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                      num_key_value_heads=max(1, hidden // 256), max_position_embeddings=512,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).float()
    model.save_pretrained(out)
    make_char_tokenizer(out)  # 64 tokens in a larger vocabulary: the server only needs a tokenizer
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--bucket-mb", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    from megatron_rl.config.schema import SGLangConfig
    from megatron_rl.models.hf_io import bucketize
    from megatron_rl.rollout.sglang_engine import SGLangEngine
    from megatron_rl.weight_sync.disk import DiskWeightSync
    from megatron_rl.weight_sync.tensor import TensorWeightSync

    work = Path(tempfile.mkdtemp(prefix="bench-weight-sync-"))
    weights = make_checkpoint(work / "model", args.hidden, args.layers, args.vocab)
    nbytes = sum(t.numel() * t.element_size() for t in weights.values())
    items = list(weights.items())
    bucket = args.bucket_mb << 20

    dst = {n: torch.empty_like(t) for n, t in items}
    memcpy = timed(lambda: [dst[n].copy_(t) for n, t in items], args.repeats)

    engine = SGLangEngine(SGLangConfig(base_port=31900, health_timeout_s=600, max_total_tokens=4096),
                          str(work / "model"), log_dir=str(work / "logs"), dtype="float32")
    try:
        version = iter(range(1, 1000))
        tensor = TensorWeightSync(engine, bucket_bytes=bucket)
        tensor_s = timed(lambda: tensor.push(bucketize(iter(items), bucket), next(version)), args.repeats)
        disk = DiskWeightSync(engine, str(work / "disk"))
        disk_s = timed(lambda: disk.push(bucketize(iter(items), bucket), next(version)), args.repeats)
        server_version = engine.client.server_info(engine.server_urls[0]).get("version")
    finally:
        engine.shutdown()

    rows = [("memcpy (torch copy_, same tensors)", memcpy), ("tensor sync (/dev/shm, flattened buckets)", tensor_s),
            ("disk sync (safetensors + update_weights_from_disk)", disk_s)]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    meta = {"date": datetime.date.today().isoformat(), "device": f"CPU: {cpu}, {os.cpu_count()} cores",
            "torch": torch.__version__, "sglang_server": server_version, "python": platform.python_version(),
            "model": f"Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, fp32",
            "tensors": len(items), "bytes": nbytes, "bucket_mb": args.bucket_mb, "repeats": args.repeats,
            "command": "python " + " ".join([Path(__file__).name, *(argv or sys.argv[1:])])}
    table = ["| path | median s | first s | GB/s (median) |", "|---|---|---|---|"]
    results = []
    for name, times in rows:
        med = statistics.median(times)
        table.append(f"| {name} | {med:.3f} | {times[0]:.3f} | {nbytes / 1e9 / med:.2f} |")
        results.append({"path": name, "seconds": times, "median_s": med, "gbytes_per_s": nbytes / 1e9 / med})
    text = "\n".join([f"# Weight sync into SGLang's real server on the CPU ({meta['date']})", "",
                      *(f"- {k}: {v}" for k, v in meta.items()), "", *table, ""])
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "weight-sync-cpu-real-server.md").write_text(text)
    (RESULTS_DIR / "weight-sync-cpu-real-server.json").write_text(json.dumps({**meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
