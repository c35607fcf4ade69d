"""Names and layouts: Hugging Face Llama / Qwen2 / Qwen3 tensors <-> Megatron GPTModel parameters.

One table per architecture (they share most rows). Each Megatron parameter maps to one or more HF
tensors and a `kind` that says how a tensor-parallel rank's shard is cut from them:

  replicated  every rank holds the full tensor (norms)
  rows        split along dim 0 (column-parallel linears, vocab-parallel embedding / lm_head)
  cols        split along dim 1 (row-parallel linears)
  qkv         Megatron fuses q, k, v per query group: [g0: q.., k, v][g1: q.., k, v]...; a TP rank
              holds whole groups
  gate_up     Megatron fuses gate and up: a TP rank holds [gate shard; up shard]

We write our own table instead of using mbridge: mbridge builds its models with the
TransformerEngine layer spec only (its names assume TE's fused norms), moves tensors with
`.cuda()`, and reads every tensor in full on TP rank 0; none of that runs on the CPU test machines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..config.schema import ModelConfig


@dataclass(frozen=True)
class Architecture:
    model_type: str
    causal_lm_class: str
    classifier_class: str
    qk_norm: bool  # Qwen3 normalises q and k per head


ARCHITECTURES = {
    "llama": Architecture("llama", "LlamaForCausalLM", "LlamaForSequenceClassification", qk_norm=False),
    "qwen2": Architecture("qwen2", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification", qk_norm=False),
    "qwen3": Architecture("qwen3", "Qwen3ForCausalLM", "Qwen3ForSequenceClassification", qk_norm=True),
}

# Megatron local name (layer part with "{i}" for the global layer index) -> (HF names, kind).
# The TE layer spec fuses the norms into the next linear; both spellings map to the same HF tensor.
_LAYER_RULES = {
    "input_layernorm.weight": (["input_layernorm.weight"], "replicated"),
    "self_attention.linear_qkv.layer_norm_weight": (["input_layernorm.weight"], "replicated"),
    "self_attention.linear_qkv.weight": (
        ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"], "qkv"),
    "self_attention.linear_qkv.bias": (
        ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"], "qkv"),
    "self_attention.q_layernorm.weight": (["self_attn.q_norm.weight"], "replicated"),
    "self_attention.k_layernorm.weight": (["self_attn.k_norm.weight"], "replicated"),
    "self_attention.linear_proj.weight": (["self_attn.o_proj.weight"], "cols"),
    "pre_mlp_layernorm.weight": (["post_attention_layernorm.weight"], "replicated"),
    "mlp.linear_fc1.layer_norm_weight": (["post_attention_layernorm.weight"], "replicated"),
    "mlp.linear_fc1.weight": (["mlp.gate_proj.weight", "mlp.up_proj.weight"], "gate_up"),
    "mlp.linear_fc2.weight": (["mlp.down_proj.weight"], "cols"),
}
_TOP_RULES = {
    "embedding.word_embeddings.weight": (["model.embed_tokens.weight"], "rows"),
    "decoder.final_layernorm.weight": (["model.norm.weight"], "replicated"),
    "output_layer.weight": (["lm_head.weight"], "rows"),
}
# critic and reward models: GPTModel's output_layer is a scalar head (HF *ForSequenceClassification)
_VALUE_HEAD = (["score.weight"], "replicated")
_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class ParamMapping:
    hf_names: tuple[str, ...]
    kind: str


def map_param(name: str, global_layer: dict[int, int], value_head: bool = False) -> ParamMapping:
    """HF names and shard kind of a Megatron parameter (`global_layer`: local -> global index)."""
    if value_head and name == "output_layer.weight":
        return ParamMapping(tuple(_VALUE_HEAD[0]), _VALUE_HEAD[1])
    m = _LAYER_RE.match(name)
    if m:
        local, rest = int(m.group(1)), m.group(2)
        if rest not in _LAYER_RULES:
            raise KeyError(f"no Hugging Face mapping for Megatron parameter {name}")
        hf, kind = _LAYER_RULES[rest]
        i = global_layer[local]
        return ParamMapping(tuple(f"model.layers.{i}.{n}" for n in hf), kind)
    if name not in _TOP_RULES:
        raise KeyError(f"no Hugging Face mapping for Megatron parameter {name}")
    hf, kind = _TOP_RULES[name]
    return ParamMapping(tuple(hf), kind)


@dataclass(frozen=True)
class Shape:
    """What the QKV / gate-up cuts need to know about the model."""

    heads: int
    groups: int
    head_dim: int

    @property
    def q_per_group(self) -> int:
        return self.heads // self.groups


def shape_of(model: ModelConfig) -> Shape:
    return Shape(model.num_attention_heads, model.num_query_groups, model.kv_channels)


def split_ranges(n: int, tp: int, rank: int) -> tuple[int, int]:
    size = n // tp
    return rank * size, (rank + 1) * size


def shard_from_hf(kind: str, read, shape: Shape, tp: int, rank: int, padded_rows: int | None = None):
    """This rank's shard, reading only the slices it needs.

    `read(i, dim, start, stop)` returns HF tensor i of the mapping, sliced [start:stop] along `dim`
    (dim None: the whole tensor). `padded_rows` is the padded vocab size for `rows` tensors whose
    HF row count (the true vocab) is smaller: the padding rows are zero.
    """
    if kind == "replicated":
        return read(0, None, 0, 0)
    if kind == "rows":
        total = padded_rows
        start, stop = split_ranges(total, tp, rank)
        true_rows = read.rows(0)
        body = read(0, 0, min(start, true_rows), min(stop, true_rows))
        if body.shape[0] == stop - start:
            return body
        pad = body.new_zeros((stop - start - body.shape[0], *body.shape[1:]))
        return torch.cat([body, pad], 0)
    if kind == "cols":
        total = read.cols(0)
        start, stop = split_ranges(total, tp, rank)
        return read(0, 1, start, stop)
    if kind == "gate_up":
        total = read.rows(0)
        start, stop = split_ranges(total, tp, rank)
        return torch.cat([read(0, 0, start, stop), read(1, 0, start, stop)], 0)
    if kind == "qkv":
        g0, g1 = split_ranges(shape.groups, tp, rank)
        d, qpg = shape.head_dim, shape.q_per_group
        q = read(0, 0, g0 * qpg * d, g1 * qpg * d)
        k = read(1, 0, g0 * d, g1 * d)
        v = read(2, 0, g0 * d, g1 * d)
        n = g1 - g0
        tail = q.shape[1:]
        fused = torch.cat([q.reshape(n, qpg * d, *tail), k.reshape(n, d, *tail), v.reshape(n, d, *tail)], 1)
        return fused.reshape(-1, *tail)
    raise ValueError(f"unknown shard kind {kind}")


def hf_from_shards(kind: str, shards: list[torch.Tensor], shape: Shape, true_rows: int | None = None):
    """Full HF tensors (a list, in the mapping's order) from every TP rank's shard."""
    if kind == "replicated":
        return [shards[0]]
    if kind == "rows":
        full = torch.cat(shards, 0)
        return [full[:true_rows] if true_rows is not None else full]
    if kind == "cols":
        return [torch.cat(shards, 1)]
    if kind == "gate_up":
        halves = [s.chunk(2, 0) for s in shards]
        return [torch.cat([h[0] for h in halves], 0), torch.cat([h[1] for h in halves], 0)]
    if kind == "qkv":
        d, qpg = shape.head_dim, shape.q_per_group
        full = torch.cat(shards, 0)
        tail = full.shape[1:]
        grouped = full.reshape(shape.groups, (qpg + 2) * d, *tail)
        q, k, v = grouped.split([qpg * d, d, d], 1)
        return [t.reshape(-1, *tail).contiguous() for t in (q, k, v)]
    raise ValueError(f"unknown shard kind {kind}")


def hf_tensor_shape(name: str, model: ModelConfig) -> tuple[int, ...]:
    """The full shape an HF tensor must have for this model config (to fail early, by name)."""
    h, f, v, d = model.hidden_size, model.ffn_hidden_size, model.vocab_size, model.kv_channels
    q, kv = model.num_attention_heads * d, model.num_query_groups * d
    leaf = name.split(".", 3)[-1] if name.startswith("model.layers.") else name
    shapes = {
        "model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h), "model.norm.weight": (h,),
        "score.weight": (1, h),
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
        "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (h, q), "self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,),
        "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f),
    }
    return shapes[leaf]


def hf_config_dict(model: ModelConfig, role: str = "actor") -> dict:
    """config.json for an exported checkpoint that transformers loads."""
    arch = ARCHITECTURES[model.architecture]
    cls = arch.causal_lm_class if role in ("actor", "reference") else arch.classifier_class
    cfg = {
        "architectures": [cls],
        "model_type": arch.model_type,
        "hidden_size": model.hidden_size,
        "intermediate_size": model.ffn_hidden_size,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_attention_heads,
        "num_key_value_heads": model.num_query_groups,
        "head_dim": model.kv_channels,
        "vocab_size": model.vocab_size,
        "max_position_embeddings": model.max_position_embeddings,
        "rope_theta": model.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_theta},
        "rms_norm_eps": model.rms_norm_eps,
        "tie_word_embeddings": model.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[model.dtype],
    }
    if model.architecture != "qwen2":  # Qwen2 always has q/k/v bias; the others take a flag
        cfg["attention_bias"] = bool(model.qkv_bias)
    if role in ("critic", "reward"):
        cfg["num_labels"] = 1
    return cfg
