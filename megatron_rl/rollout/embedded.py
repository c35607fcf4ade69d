"""The embedded rollout engine: in-process generation with the transformers model of the
architecture and its KV cache, batched, on CPU or one GPU.

The network, its attention and its cache are transformers' own; what is ours is the sampling loop
around them, because RL needs things `generate()` does not give directly: the per-token logprob of
each sampled token under the exact distribution the trainer will recompute, a finish reason per
sample, stop strings without a tokenizer-specific criteria object, and a seeded generator.
Weights arrive as full HF-named tensors through `update_weights`, the same stream SGLang receives.
"""
from __future__ import annotations

import inspect
from typing import Callable, Iterable, Optional

import torch

from ..config.schema import ModelConfig
from .types import RolloutBatch, Sample, SamplingParams


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) what top-k and top-p leave out; [N, V] fp32."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def cache_argument(model) -> str:
    """The name the model's forward gives its KV cache: `cache` in current transformers, which still
    accepts `past_key_values` with a deprecation warning (it is to be removed); `past_key_values`
    in the releases before the rename (5.19, which the lock and SGLang 0.5.23 pin). The output
    field carries the same name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class EmbeddedEngine:
    def __init__(self, model: ModelConfig, *, hf_path: Optional[str] = None, device: Optional[str] = None,
                 decode: Optional[Callable[[list[int]], str]] = None, pad_token_id: int = 0,
                 max_batch_size: int = 256, seed: int = 0):
        import transformers

        from ..models.hf_mapping import hf_config_dict

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[model.dtype]
        if hf_path is not None:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(hf_path, dtype=dtype)
        else:  # weights come later, through update_weights
            cfg = hf_config_dict(model)
            config = transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "torch_dtype"})
            self.model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        self._cache_argument = cache_argument(self.model)  # its forward's name for the KV cache
        self.decode = decode
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.weight_version = 0
        self._params = dict(self.model.named_parameters())

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: Optional[int] = None) -> int:
        count = 0
        for name, tensor in named_tensors:
            param = self._params.get(name)
            if param is None:
                raise KeyError(f"the embedded engine's model has no weight named {name}: is it the same architecture?")
            if param.shape != tensor.shape:
                raise ValueError(f"weight {name}: got {tuple(tensor.shape)}, the engine's model has {tuple(param.shape)}")
            param.copy_(tensor.to(device=param.device, dtype=param.dtype))
            count += 1
        if version is not None:
            self.weight_version = version
        return count

    def release_memory(self) -> None:
        """Give the GPU back to the trainer (colocated): the KV cache only lives inside generate, the
        weights move to host memory. On CPU there is nothing to give back."""
        if self.device.type == "cuda":
            self.model.to("cpu")  # parameters keep their identity, so update_weights still finds them
            torch.cuda.empty_cache()

    def resume_memory(self) -> None:
        if self.device.type == "cuda":
            self.model.to(self.device)

    def health(self) -> bool:
        return self.model is not None

    def shutdown(self) -> None:
        self.model, self._params = None, {}

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> RolloutBatch:
        if params.stop and self.decode is None:
            raise ValueError("stop strings need a decode function (the tokenizer's): pass decode= to the engine")
        rows = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
        batch = RolloutBatch()
        for start in range(0, len(rows), self.max_batch_size):
            batch.samples += self._generate_rows(rows[start:start + self.max_batch_size], params)
        return batch

    @torch.no_grad()
    def _generate_rows(self, rows: list[tuple[int, list[int]]], params: SamplingParams) -> list[Sample]:
        from transformers import DynamicCache

        n, longest = len(rows), max(len(p) for _, p in rows)
        ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((n, longest), dtype=torch.long, device=self.device)
        for r, (_, prompt) in enumerate(rows):  # left padding: every row's next token is at the end
            ids[r, longest - len(prompt):] = torch.tensor(prompt, device=self.device)
            mask[r, longest - len(prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         **{self._cache_argument: DynamicCache(config=self.model.config)}, use_cache=True)
        next_pos = positions[:, -1:] + 1

        greedy = params.temperature == 0
        temperature = 1.0 if greedy else params.temperature
        stop_ids = torch.tensor(list(params.stop_token_ids), dtype=torch.long, device=self.device)
        tokens = [[] for _ in range(n)]
        logprobs = [[] for _ in range(n)]
        reasons: list[Optional[str]] = [None] * n
        for _ in range(params.max_new_tokens):
            logits = out.logits[:, -1].float() / temperature
            logp = torch.log_softmax(logits, -1)
            if greedy:
                choice = logits.argmax(-1)
            else:
                probs = torch.softmax(_filter_logits(logits, params.top_k, params.top_p), -1)
                choice = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
            chosen_lp = logp.gather(-1, choice[:, None])[:, 0]
            stopped = torch.isin(choice, stop_ids) if len(stop_ids) else torch.zeros_like(choice, dtype=torch.bool)
            for r in range(n):
                if reasons[r] is not None:
                    continue
                tokens[r].append(int(choice[r]))
                logprobs[r].append(float(chosen_lp[r]))
                if stopped[r] or (params.stop and self._ends_with_stop(tokens[r], params.stop)):
                    reasons[r] = "stop"
            if all(reason is not None for reason in reasons):
                break
            mask = torch.cat([mask, mask.new_ones(n, 1)], 1)
            out = self.model(input_ids=choice[:, None], attention_mask=mask, position_ids=next_pos,
                             **{self._cache_argument: getattr(out, self._cache_argument)}, use_cache=True)
            next_pos = next_pos + 1
        return [
            Sample(prompt_ids=list(prompt), response_ids=tokens[r], logprobs=logprobs[r],
                   finish_reason=reasons[r] or "length", weight_version=self.weight_version, prompt_index=i)
            for r, (i, prompt) in enumerate(rows)
        ]

    def _ends_with_stop(self, tokens: list[int], stops: tuple[str, ...]) -> bool:
        # checked after every token, so a stop string in the recent tail has just been completed
        tail = self.decode(tokens[-16:])
        return any(s in tail for s in stops)
