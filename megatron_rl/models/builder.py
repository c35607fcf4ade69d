"""Megatron GPT models for the four roles, built from ModelConfig + ParallelConfig.

  actor      causal LM (vocab-parallel lm_head, logits stay sharded over TP for the kernels)
  reference  the same network, frozen (eval mode, no grads)
  critic     the same trunk with a scalar value head per token
  reward     the same trunk with a scalar head read at the last token (Bradley-Terry reward model)

The TransformerEngine layer spec is used when TE imports, the local spec otherwise (CPU, tests).
Each function returns a list of model chunks: one per virtual pipeline stage (one without VPP).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config.schema import ModelConfig, ParallelConfig

ROLES = ("actor", "reference", "critic", "reward")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    """Megatron's vocab-parallel layers need the vocab divisible by TP; pad with zero rows.

    Real checkpoints (151936, 128256, ...) divide by 8 already, so nothing is padded for them; the
    padded logit columns, when there are any, are masked out before any softmax.
    """
    return -(-vocab_size // tp) * tp


def transformer_config(model: ModelConfig, parallel: ParallelConfig, *, recompute: str = "none",
                       perform_initialization: bool = True, init_method_std: float = 0.02):
    from megatron.core.transformer import TransformerConfig

    from .hf_mapping import ARCHITECTURES

    dtype = _DTYPES[model.dtype]
    on_gpu = torch.cuda.is_available()
    vpp = parallel.virtual_pipeline if (parallel.virtual_pipeline or 1) > 1 else None
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=model.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=bool(model.qkv_bias),
        qk_layernorm=ARCHITECTURES[model.architecture].qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=init_method_std,
        perform_initialization=perform_initialization,
        use_cpu_initialization=not on_gpu,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        pipeline_dtype=dtype,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        virtual_pipeline_model_parallel_size=vpp,
        context_parallel_size=parallel.context,
        sequence_parallel=parallel.sequence_parallel,
        variable_seq_lengths=True,  # RL batches change length every step
        moe_token_dispatcher_type="alltoall",  # dense models; the default allgather refuses variable lengths
        # fused paths need apex / TE / CUDA; the unfused ones are exact
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
    )
    if recompute == "full":
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif recompute == "selective":
        kwargs.update(recompute_granularity="selective")
    return TransformerConfig(**kwargs)


class ValueHead(nn.Module):
    """Scalar head on the final hidden states; stands where GPTModel keeps its output_layer.

    Replicated on every TP rank (hidden states are replicated there too, without sequence
    parallelism), so its gradients agree across TP ranks without a reduction.
    """

    def __init__(self, hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, hidden_size, dtype=dtype))

    def forward(self, hidden_states, weight=None, runtime_gather_output=None):
        return torch.nn.functional.linear(hidden_states, self.weight), None


def _layer_spec(config):
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if te_available():
        return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
    return specs.get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=config.qk_layernorm)


def build_model(role: str, model: ModelConfig, parallel: ParallelConfig, *, recompute: str = "none",
                perform_initialization: bool = True, seed: Optional[int] = None) -> list[nn.Module]:
    """This rank's chunks of the role's model (parallel_state must be initialised)."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; expected one of {', '.join(ROLES)}")
    config = transformer_config(model, parallel, recompute=recompute,
                                perform_initialization=perform_initialization)
    spec = _layer_spec(config)
    value_head = role in ("critic", "reward")
    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        pre = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        gpt = GPTModel(
            config=config,
            transformer_layer_spec=spec,
            vocab_size=padded_vocab_size(model.vocab_size, parallel.tensor),
            max_sequence_length=model.max_position_embeddings,
            pre_process=pre,
            post_process=post,
            parallel_output=True,  # logits stay vocab-sharded; the kernels merge across TP
            share_embeddings_and_output_weights=model.tie_word_embeddings and not value_head,
            position_embedding_type="rope",
            rotary_base=int(model.rope_theta) if float(model.rope_theta).is_integer() else model.rope_theta,
            vp_stage=stage,
        )
        # the local spec's torch norms are created in fp32 whatever params_dtype says; Megatron's
        # Float16Module casts the whole model, so do the same (without its fp32 output cast: the
        # kernels take bf16 logits)
        gpt.to(config.params_dtype)
        if not perform_initialization:
            _mark_tensor_parallel(gpt)
        if value_head and post:
            gpt.output_layer = ValueHead(model.hidden_size, config.params_dtype)
        if role == "reference":
            gpt.eval()
            gpt.requires_grad_(False)
        chunks.append(gpt)
    return chunks


def _mark_tensor_parallel(model: nn.Module) -> None:
    """Tag TP-split parameters the way Megatron's initialisers do.

    megatron-core sets `tensor_model_parallel` only inside its weight initialisers, so with
    perform_initialization=False (weights about to be loaded) a split weight looks replicated and
    TP rank 1+ leaves it out of the gradient norm: clipping then uses too small a norm.
    """
    from megatron.core import tensor_parallel as tpl

    kinds = ((tpl.ColumnParallelLinear, 0), (tpl.RowParallelLinear, 1), (tpl.VocabParallelEmbedding, 0))
    for module in model.modules():
        for cls, dim in kinds:
            if isinstance(module, cls):
                for name in ("weight", "bias"):
                    param = getattr(module, name, None)
                    if name == "bias" and cls is tpl.RowParallelLinear:
                        continue  # a row-parallel bias is added after the reduction: replicated
                    if isinstance(param, nn.Parameter) and not hasattr(param, "tensor_model_parallel"):
                        tpl.set_tensor_model_parallel_attributes(param, True, dim if name == "weight" else 0, 1)


def global_layer_index(chunk: nn.Module) -> dict[int, int]:
    """Local index in chunk.decoder.layers -> global 0-based layer index."""
    decoder = getattr(chunk, "decoder", None)
    if decoder is None:
        return {}
    return {i: layer.layer_number - 1 for i, layer in enumerate(decoder.layers)}


def unwrap(chunk: nn.Module) -> nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk
