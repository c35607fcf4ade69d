"""Read the architecture of a local Hugging Face checkpoint (its config.json) into ModelConfig keys.

Only what the schema describes is read; a checkpoint that needs more than that (rope scaling,
sliding-window attention, another model family) is refused here rather than built wrong later.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")

# HF config.json key -> ModelConfig field
_KEYS = {
    "num_hidden_layers": "num_layers",
    "hidden_size": "hidden_size",
    "intermediate_size": "ffn_hidden_size",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_query_groups",
    "head_dim": "head_dim",
    "vocab_size": "vocab_size",
    "rope_theta": "rope_theta",
    "tie_word_embeddings": "tie_word_embeddings",
    "max_position_embeddings": "max_position_embeddings",
    "rms_norm_eps": "rms_norm_eps",
}


def read_hf_config(hf_path: str) -> dict[str, Any]:
    """<hf_path>/config.json as a dict; ConfigError naming model.hf_path when it is not there."""
    path = Path(hf_path).expanduser()
    config_json = path / "config.json"
    if not config_json.is_file():
        raise ConfigError(
            f"model.hf_path: no config.json in {path}: point it at a local Hugging Face checkpoint directory"
        )
    try:
        data = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model.hf_path: cannot read {config_json}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model.hf_path: {config_json} does not hold a JSON object")
    return data


def model_fields_from_hf(hf: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """ModelConfig fields described by an HF config dict (keys it lacks are left out)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model.hf_path: model_type {model_type!r} in {where} is not supported: "
            f"use a {', '.join(SUPPORTED_MODEL_TYPES)} checkpoint"
        )
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in (None, "default"):
        raise ConfigError(
            f"model.hf_path: rope scaling '{rope_type}' in {where} is not supported yet: "
            "use a checkpoint without rope_scaling"
        )
    if hf.get("use_sliding_window"):
        raise ConfigError(
            f"model.hf_path: sliding-window attention in {where} is not supported: set use_sliding_window false"
        )

    out: dict[str, Any] = {"architecture": model_type}
    for hf_key, field in _KEYS.items():
        if hf.get(hf_key) is not None:
            out[field] = hf[hf_key]
    if "rope_theta" not in out and isinstance(rope, dict) and rope.get("rope_theta") is not None:
        out["rope_theta"] = rope["rope_theta"]  # transformers >= 5 keeps it under rope_parameters
    out.setdefault("tie_word_embeddings", False)  # the HF default for these families
    # Qwen2 always has a bias on q/k/v; Llama and Qwen3 only when the config says attention_bias
    out["qkv_bias"] = bool(hf.get("attention_bias", model_type == "qwen2"))
    return out


def fill_model_from_hf(model: dict[str, Any]) -> dict[str, Any]:
    """The model section with the fields it leaves unset (absent or null) read from model.hf_path;
    explicit values win."""
    hf_path = model.get("hf_path")
    if hf_path is None:
        return model
    if not isinstance(hf_path, str) or not hf_path:
        raise ConfigError(f"model.hf_path: expected a directory path, got {hf_path!r}")
    from_hf = model_fields_from_hf(read_hf_config(hf_path), where=f"{hf_path}/config.json")
    return {**from_hf, **{k: v for k, v in model.items() if v is not None}}


def side_model_config(path: str, policy, parallel, key: str, *, what: str, classifier: bool, hint: str):
    """The ModelConfig of a model beside the policy (a reward model, a distillation teacher) from
    `path`/config.json; dtype and kernels follow the policy. ConfigError naming `key` when the
    checkpoint is missing, has the wrong head (a one-label *ForSequenceClassification when
    `classifier`, else a *ForCausalLM), or does not split over the parallel layout. `hint`: how to
    get a right one."""
    from .schema import ModelConfig

    config_json = Path(path).expanduser() / "config.json"
    if not config_json.is_file():
        raise ConfigError(f"{key}: no config.json in {path}: {hint}")
    try:
        hf = json.loads(config_json.read_text(encoding="utf-8"))
        fields = model_fields_from_hf(hf, where=str(config_json))
    except ConfigError as exc:
        raise ConfigError(f"{key}: {str(exc).removeprefix('model.hf_path: ')}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot read {config_json}: {exc}") from None
    arch = (hf.get("architectures") or ["?"])[0]
    if classifier and (not arch.endswith("ForSequenceClassification") or hf.get("num_labels", 1) != 1):
        raise ConfigError(f"{key}: {path} holds a {arch} (num_labels {hf.get('num_labels', 1)}), not a {what} "
                          f"with one score: {hint}")
    if not classifier and not arch.endswith("ForCausalLM"):
        raise ConfigError(f"{key}: {path} holds a {arch}, not a causal language model: {hint}")
    model = ModelConfig(**fields, hf_path=str(path), dtype=policy.dtype, kernels=policy.kernels)
    tp, pp = parallel.tensor, parallel.pipeline
    for name, value, by in (("num_attention_heads", model.num_attention_heads, tp),
                            ("num_query_groups", model.num_query_groups, tp), ("num_layers", model.num_layers, pp)):
        if value % by:
            raise ConfigError(f"{key}: the {what}'s {name} {value} is not divisible by the parallel layout's "
                              f"{'tensor' if by == tp else 'pipeline'} size {by}: use a {what} that splits "
                              "over parallel.*")
    if model.vocab_size != policy.vocab_size:
        raise ConfigError(f"{key}: the {what}'s vocab_size {model.vocab_size} differs from the policy's "
                          f"{policy.vocab_size}: it must use the policy's tokenizer")
    return model
