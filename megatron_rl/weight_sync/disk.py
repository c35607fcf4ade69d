"""Weight sync through a shared directory: HF safetensors, then `/update_weights_from_disk` on every
server. The slowest transport, but it needs nothing between trainer and servers except a path both
can read (another node, another container, a server of a different SGLang version).

Each version goes to `<root>/v<version>`, written under a temporary name and renamed when complete,
so a server never loads a half-written checkpoint; older versions are deleted once every server has
loaded the new one (`keep` of them stay). SGLang takes the disk update under its own lock (it waits
for running requests, then flushes its cache), so no pause or weight-update session is needed.

Same face as the other transports: `push(buckets, version)` in one process, collective
`sync(actor, version)` (which uses `models.hf_io.save_hf`: TP/PP-collective and atomic).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Optional

from .tensor import Bucket, _client_of, bucket_nbytes


class DiskWeightSync:
    name = "disk"

    def __init__(self, target=None, root: str = "outputs/weight_sync", *, keep: int = 1,
                 load_format: Optional[str] = None):
        """`target`: the SGLangEngine (or SGLangClient) on global rank 0, None on the other ranks.
        `root` must be visible to the servers under the same path."""
        self.client, self.engine = _client_of(target) if target is not None else (None, None)
        self.root = Path(root).expanduser().resolve()
        self.keep = max(1, keep)
        self.load_format = load_format

    def version_dir(self, version: int) -> Path:
        return self.root / f"v{version}"

    # ------------------------------------------------------------------ the core (one process)
    def push(self, buckets: Iterable[Bucket], version: int, *, model=None) -> dict:
        """Write `buckets` as an HF checkpoint (one safetensors file per bucket; config.json when
        `model`, a ModelConfig, is given) and load it on every server."""
        start = time.perf_counter()
        path = self.version_dir(version)
        tensors, nbytes = write_buckets(buckets, path, model=model)
        self.load(path, version)
        return {"tensors": tensors, "bytes": nbytes, "path": str(path), "seconds": time.perf_counter() - start}

    def load(self, path: Path, version: int) -> None:
        self.client.update_weights_from_disk(str(path), load_format=self.load_format, weight_version=version)
        if self.engine is not None:
            self.engine.weight_version = version
            self.engine.disk_weights = str(path)  # a server restarted later loads it again
        self.prune(version)

    def prune(self, version: int) -> None:
        """Delete versions older than the `keep` newest (the servers have moved on)."""
        versions = sorted(int(p.name[1:]) for p in self.root.glob("v*") if p.is_dir() and p.name[1:].isdigit())
        for old in [v for v in versions if v <= version][: -self.keep]:
            shutil.rmtree(self.version_dir(old), ignore_errors=True)

    # ------------------------------------------------------------------ Megatron glue (collective)
    def sync(self, actor, version: int) -> dict:
        """Every rank calls it: save_hf (collective, atomic), then rank 0 asks every server to load."""
        import torch.distributed as dist

        from ..models.hf_io import save_hf

        start = time.perf_counter()
        path = self.version_dir(version)
        save_hf(actor.chunks, str(path), actor.model, role="actor")
        if dist.get_rank() == 0:
            if self.client is None:
                raise ValueError("the SGLang engine (or client) must be passed on global rank 0")
            self.load(path, version)
        dist.barrier()
        return {"path": str(path), "seconds": time.perf_counter() - start}


def write_buckets(buckets: Iterable[Bucket], out_dir: Path, *, model=None) -> tuple[int, int]:
    """An HF checkpoint from buckets, atomically (`<out_dir>.partial` renamed at the end);
    returns (tensors, bytes)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    files, weight_map, tensors, nbytes = [], {}, 0, 0
    for i, bucket in enumerate(buckets):
        file = f"model-{i + 1:05d}.safetensors"
        # safetensors wants contiguous CPU tensors sharing no storage (split QKV halves are views)
        save_file({n: t.detach().to("cpu", copy=True).contiguous() for n, t in bucket}, str(partial / file),
                  metadata={"format": "pt"})
        files.append(file)
        weight_map.update({n: file for n, _ in bucket})
        tensors += len(bucket)
        nbytes += bucket_nbytes(bucket)
    total = sum((partial / f).stat().st_size for f in files)
    (partial / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    if model is not None:
        from ..models.hf_mapping import hf_config_dict

        (partial / "config.json").write_text(json.dumps(hf_config_dict(model), indent=2))
    for f in partial.iterdir():  # on disk before the rename makes the directory visible
        with open(f, "rb") as h:
            os.fsync(h.fileno())
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return tensors, nbytes
