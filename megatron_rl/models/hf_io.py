"""Hugging Face safetensors in and out of Megatron TP/PP shards.

Loading reads only the slices a rank owns (safetensors `get_slice`), so no rank ever holds the full
model. Export streams full HF-named tensors one at a time (a TP all-gather per tensor; each pipeline
stage yields its own layers); the same stream feeds weight sync to the rollout engines and the
safetensors writer.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from ..config.schema import ModelConfig
from .builder import global_layer_index, padded_vocab_size, unwrap
from .hf_mapping import (ARCHITECTURES, hf_config_dict, hf_from_shards, hf_tensor_shape, map_param, shape_of,
                         shard_from_hf)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the fix."""


class _HFReader:
    """Sliced reads from a directory of safetensors files (sharded with an index, or single)."""

    def __init__(self, hf_path: str):
        from safetensors import safe_open

        self.root = Path(hf_path).expanduser()
        index = self.root / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(self.root.glob("*.safetensors"))
            if not files:
                raise CheckpointError(
                    f"no *.safetensors in {self.root}: point model.hf_path at a Hugging Face checkpoint "
                    "saved with safetensors (save_pretrained(..., safe_serialization=True))"
                )
            weight_map = {}
            for f in files:
                with safe_open(str(f), framework="pt") as h:
                    weight_map.update({k: f.name for k in h.keys()})
        self.weight_map = weight_map
        self._open = {}
        self._safe_open = safe_open

    def slice(self, name: str):
        if name not in self.weight_map:
            raise CheckpointError(
                f"tensor {name} is missing from the checkpoint in {self.root}: "
                "is model.architecture / model.hf_path the right model?"
            )
        file = self.weight_map[name]
        if file not in self._open:
            path = self.root / file
            if not path.is_file():
                raise CheckpointError(f"{path} (listed in the index for {name}) does not exist: re-download the checkpoint")
            self._open[file] = self._safe_open(str(path), framework="pt")
        return self._open[file].get_slice(name)

    def file_of(self, name: str) -> str:
        return str(self.root / self.weight_map.get(name, "?"))


def check_hf_checkpoint(hf_path: str, model: ModelConfig) -> None:
    """Fail in one line when the checkpoint's config.json disagrees with the model we build."""
    path = Path(hf_path).expanduser() / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {path.parent}: point model.hf_path at a Hugging Face checkpoint")
    hf = json.loads(path.read_text())
    expected = ARCHITECTURES[model.architecture].model_type
    if hf.get("model_type") != expected:
        raise CheckpointError(
            f"{path}: model_type {hf.get('model_type')!r} but model.architecture is {model.architecture!r}: "
            "fix model.architecture or model.hf_path"
        )
    for hf_key, ours in (("vocab_size", model.vocab_size), ("hidden_size", model.hidden_size),
                         ("num_hidden_layers", model.num_layers)):
        if hf_key in hf and hf[hf_key] != ours:
            raise CheckpointError(
                f"{path}: {hf_key} is {hf[hf_key]} but the model config says {ours}: "
                "drop the explicit model.* value or use the matching checkpoint"
            )


def _local_params(chunk):
    return [(n, p) for n, p in unwrap(chunk).named_parameters()]


def _skip_tied_output(name: str, model: ModelConfig, value_head: bool) -> bool:
    return name == "output_layer.weight" and model.tie_word_embeddings and not value_head


@torch.no_grad()
def load_hf_weights(chunks, hf_path: str, model: ModelConfig, *, value_head: bool = False,
                    allow_missing: tuple[str, ...] = ()) -> None:
    """Fill this rank's chunks from an HF checkpoint, reading only this rank's slices.

    `allow_missing` lists HF names that may be absent (a critic initialised from a causal LM has no
    `score.weight`; its head keeps its initial value).
    """
    from megatron.core import parallel_state as ps

    check_hf_checkpoint(hf_path, model)
    reader = _HFReader(hf_path)
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    shape = shape_of(model)
    vocab_padded = padded_vocab_size(model.vocab_size, tp)
    for chunk in chunks:
        layers = global_layer_index(unwrap(chunk))
        for name, param in _local_params(chunk):
            mapping = map_param(name, layers, value_head=value_head)
            hf_names = mapping.hf_names
            if name == "output_layer.weight" and not value_head and model.tie_word_embeddings:
                hf_names = ("model.embed_tokens.weight",)  # last PP stage's copy of tied embeddings
            if any(n in allow_missing and n not in reader.weight_map for n in hf_names):
                continue
            slices = [reader.slice(n) for n in hf_names]
            for n, sl in zip(hf_names, slices):
                want = hf_tensor_shape(n, model)
                if tuple(sl.get_shape()) != want:
                    raise CheckpointError(
                        f"{reader.file_of(n)}: {n} has shape {tuple(sl.get_shape())} but this model config needs "
                        f"{want}: the checkpoint does not match model.* (or model.hf_path is the wrong model)"
                    )

            def read(i, dim, start, stop, _s=slices):
                if dim is None:
                    return _s[i][:]
                return _s[i][start:stop] if dim == 0 else _s[i][:, start:stop]

            read.rows = lambda i, _s=slices: _s[i].get_shape()[0]
            read.cols = lambda i, _s=slices: _s[i].get_shape()[1]
            shard = shard_from_hf(mapping.kind, read, shape, tp, rank, padded_rows=vocab_padded)
            if tuple(shard.shape) != tuple(param.shape):
                raise CheckpointError(
                    f"{reader.file_of(hf_names[0])}: {hf_names[0]} gives a {tuple(shard.shape)} shard but "
                    f"{name} is {tuple(param.shape)}: the checkpoint does not match the model config"
                )
            param.copy_(shard.to(param.dtype))


@torch.no_grad()
def iter_hf_tensors(chunks, model: ModelConfig, *, value_head: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Full HF-named tensors of the layers this pipeline stage holds (collective over the TP group).

    Every TP rank receives the same full tensors; one tensor is gathered at a time.
    """
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    group = ps.get_tensor_model_parallel_group()
    shape = shape_of(model)
    for chunk in chunks:
        layers = global_layer_index(unwrap(chunk))
        for name, param in _local_params(chunk):
            if _skip_tied_output(name, model, value_head):
                continue
            mapping = map_param(name, layers, value_head=value_head)
            local = param.detach()
            if mapping.kind == "replicated" or tp == 1:
                shards = [local] * (1 if mapping.kind == "replicated" else tp)
            else:
                shards = [torch.empty_like(local) for _ in range(tp)]
                dist.all_gather(shards, local.contiguous(), group=group)
            true_rows = model.vocab_size if mapping.kind == "rows" else None
            for hf_name, tensor in zip(mapping.hf_names, hf_from_shards(mapping.kind, shards, shape, true_rows)):
                yield hf_name, tensor


def bucketize(named_tensors, bucket_bytes: int):
    """Group a stream of (name, tensor) into lists of at most `bucket_bytes` (a larger tensor goes alone)."""
    bucket, size = [], 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def iter_hf_buckets(chunks, model: ModelConfig, bucket_bytes: int, *, value_head: bool = False):
    """`iter_hf_tensors` grouped by `bucketize`: the weight-sync stream, bounded in memory."""
    return bucketize(iter_hf_tensors(chunks, model, value_head=value_head), bucket_bytes)


def save_hf(chunks, out_dir: str, model: ModelConfig, *, role: str = "actor") -> None:
    """Write an HF checkpoint (safetensors, one file per pipeline stage, index, config.json).

    Collective over all ranks. Written under `<out_dir>.partial` and renamed when complete, so a
    killed export never leaves a directory that looks like a checkpoint.
    """
    from megatron.core import parallel_state as ps
    from safetensors.torch import save_file

    value_head = role in ("critic", "reward")
    out = Path(out_dir)
    partial = out.with_name(out.name + ".partial")
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    pp, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    writer = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    tensors = {}
    for name, tensor in iter_hf_tensors(chunks, model, value_head=value_head):
        if writer:
            tensors[name] = tensor.contiguous().clone()
    file = f"model-{pp_rank + 1:05d}-of-{pp:05d}.safetensors"
    if writer:
        save_file(tensors, str(partial / file), metadata={"format": "pt"})
    names = list(tensors) if writer else []
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (file, names, nbytes if writer else 0))
    if rank == 0:
        weight_map = {n: f for f, ns, _ in gathered for n in ns}
        total = sum(b for _, _, b in gathered)
        (partial / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
        )
        (partial / "config.json").write_text(json.dumps(hf_config_dict(model, role), indent=2))
        for f in partial.iterdir():  # flush before the rename makes it visible
            with open(f, "rb") as h:
                os.fsync(h.fileno())
        if out.exists():
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(out)
    dist.barrier()
