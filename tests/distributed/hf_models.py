"""Tiny random Hugging Face models (no hub access) and the ModelConfig that describes them."""
from __future__ import annotations

import torch

from megatron_rl.config.schema import ModelConfig

SHAPES = {
    # untied, q/k/v bias, 4 layers so PP=2 holds 2 each
    "qwen2": dict(architecture="qwen2", num_layers=4, hidden_size=64, ffn_hidden_size=96,
                  num_attention_heads=4, num_query_groups=2, vocab_size=96, tie_word_embeddings=False,
                  rope_theta=10000.0),
    # tied embeddings, a vocab that TP=2 must pad (97 -> 98), rope theta 500000
    "llama": dict(architecture="llama", num_layers=2, hidden_size=64, ffn_hidden_size=128,
                  num_attention_heads=8, num_query_groups=2, vocab_size=97, tie_word_embeddings=True,
                  rope_theta=500000.0),
    # q/k norms, head_dim != hidden/heads
    "qwen3": dict(architecture="qwen3", num_layers=2, hidden_size=64, ffn_hidden_size=96,
                  num_attention_heads=4, num_query_groups=2, head_dim=32, vocab_size=96,
                  tie_word_embeddings=True, rope_theta=1000000.0),
}


def model_config(name: str) -> ModelConfig:
    return ModelConfig(**SHAPES[name], max_position_embeddings=128, rms_norm_eps=1e-6, dtype="fp32")


def make_hf_model(name: str, seed: int):
    """A random transformers model of the named shape, with non-trivial norms and biases."""
    import transformers

    from megatron_rl.models.hf_mapping import hf_config_dict

    cfg_dict = hf_config_dict(model_config(name))
    cls_name = cfg_dict["architectures"][0]
    config = transformers.AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if k != "torch_dtype"})
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).float().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in n else 0.0))
    return model
