"""Helpers of the real-SGLang-server tests: a tiny checkpoint the server can load (weights and a
tokenizer), servers launched by the project's launcher on the CPU, and an fp64 transformers reference."""
from __future__ import annotations

from pathlib import Path

import torch

from free_ports import free_port_range
from megatron_rl.config.schema import ModelConfig, RolloutConfig, SGLangConfig

# configs/models/tiny-qwen2.yaml, the demo's model, untied: a random tied model's greedy answer
# repeats its last prompt token, which no stop test can use
TINY = dict(architecture="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
            num_query_groups=2, vocab_size=64, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
            qkv_bias=True, tie_word_embeddings=False)


def free_port(span: int = 1) -> int:
    """A port p with p .. p+span-1 free now."""
    return free_port_range(span)


def model_config(dtype: str = "fp32") -> ModelConfig:
    return ModelConfig(**TINY, dtype=dtype)


def make_tiny_checkpoint(out: Path, seed: int = 0) -> tuple[str, ModelConfig]:
    """An fp32 HF checkpoint of the tiny model (random weights; the norms and biases non-trivial so a
    wrong reshard shows) with the demo's character tokenizer. Returns (path, ModelConfig)."""
    import transformers

    from megatron_rl.data.synthetic import make_char_tokenizer
    from megatron_rl.models.hf_mapping import hf_config_dict

    mc = model_config()
    cfg = hf_config_dict(mc)
    config = transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "torch_dtype"})
    torch.manual_seed(seed)
    model = getattr(transformers, cfg["architectures"][0])(config).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
            elif name == "lm_head.weight":
                p.mul_(10.0)  # next-token entropy ~3 nats of 4.2: greedy choices clear, samples still vary
    model.save_pretrained(out)
    vocab = make_char_tokenizer(out)
    assert vocab == mc.vocab_size
    return str(out), mc


def rollout_config(*, placement: str = "colocated", weight_sync: str = "auto", **sglang) -> RolloutConfig:
    base = dict(base_port=free_port(4), router_port=free_port(), health_timeout_s=300, max_restarts=2,
                max_concurrency=64, request_timeout_s=120)
    return RolloutConfig(engine="sglang", placement=placement, weight_sync=weight_sync, bucket_mb=1,
                         sglang=SGLangConfig(**{**base, **sglang}))


def launch_engine(model_path: str, log_dir: Path, *, dtype: str = "float32", client_kwargs=None, **kw):
    """A real server on the CPU, launched by SGLangEngine (our launcher), logs in `log_dir`."""
    from megatron_rl.rollout.sglang_engine import SGLangEngine

    cfg = rollout_config(**kw)
    return SGLangEngine.from_config(cfg, model_path, run_seed=0, output_dir=str(log_dir), dtype=dtype,
                                    client_kwargs=client_kwargs)


@torch.no_grad()
def reference_logprobs(model_path_or_model, samples) -> list[torch.Tensor]:
    """Teacher-forced log p(response token) of each sample under the transformers model, in fp64."""
    import transformers

    model = model_path_or_model
    if isinstance(model, str):
        model = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float64)
    model = model.double().eval()
    out = []
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        logp = torch.log_softmax(model(ids).logits[0], -1)
        n = len(s.prompt_ids)
        out.append(logp[n - 1:n - 1 + len(s.response_ids)].gather(-1, torch.tensor(s.response_ids)[:, None])[:, 0])
    return out


def max_gap(samples, reference: list[torch.Tensor]) -> float:
    return max((ref - torch.tensor(s.logprobs, dtype=torch.float64)).abs().max().item()
               for s, ref in zip(samples, reference) if s.response_ids)


ROOT_DIR = Path(__file__).resolve().parents[2]
