"""The typed schema of one run.

Every section forbids unknown keys; field-level checks live on the section, checks that span
sections (parallel layout against the model, estimator against the critic, ...) live in
`megatron_rl.config.checks`. Each component later receives only its own section.

YAML loading, includes, dotted overrides, `${...}` interpolation and reading `model.hf_path` live in
`megatron_rl.config.loader`; `RunConfig.model_validate` on a plain dict does none of that.

Names follow what verl/slime users know where a name exists (clip_low/clip_high, dual_clip,
loss_agg, kl estimator names, n_samples_per_prompt, ...).
"""
from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# The literal sets below mirror the registries in megatron_rl.algorithms (a test keeps them equal);
# the config layer does not import the algorithm code.
AdvantageEstimator = Literal[
    "gae", "grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "grpo_process"
]
LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "abs", "k2", "k3", "low_var_kl"]
RatioLevel = Literal["token", "sequence", "sequence-token"]
GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce_plus_plus_baseline", "grpo_process")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(Section):
    name: str = "run"
    output_dir: str = "outputs/${run.name}"
    seed: int = 1234


class ModelConfig(Section):
    """The architecture: from a local HF checkpoint (`hf_path`) or spelled out (presets in configs/models)."""

    hf_path: Optional[str] = None
    architecture: Literal["qwen2", "qwen3", "llama"] = "qwen2"
    num_layers: Optional[int] = Field(None, ge=1)
    hidden_size: Optional[int] = Field(None, ge=1)
    ffn_hidden_size: Optional[int] = Field(None, ge=1)
    num_attention_heads: Optional[int] = Field(None, ge=1)
    num_query_groups: Optional[int] = Field(None, ge=1, validate_default=True)  # KV heads; default: heads
    head_dim: Optional[int] = Field(None, ge=1)
    vocab_size: Optional[int] = Field(None, ge=1)
    max_position_embeddings: int = Field(4096, ge=1)
    rope_theta: float = Field(1_000_000.0, gt=0)
    rms_norm_eps: float = Field(1e-6, gt=0)
    qkv_bias: Optional[bool] = Field(None, validate_default=True)  # default: qwen2 True, llama/qwen3 False
    tie_word_embeddings: bool = False
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    # logprob/entropy/policy-loss kernels: triton (fused), reference (eager torch), or auto (triton
    # where it can run: a GPU, or TRITON_INTERPRET=1 on CPU)
    kernels: Literal["auto", "triton", "reference"] = "auto"

    # Fields a spelled-out architecture must give (config.json gives them with hf_path).
    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = (
        "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size"
    )

    @field_validator("num_query_groups")
    @classmethod
    def _groups_default_to_heads(cls, v, info: ValidationInfo):
        return info.data.get("num_attention_heads") if v is None else v

    @field_validator("qkv_bias")
    @classmethod
    def _bias_follows_architecture(cls, v, info: ValidationInfo):
        return info.data.get("architecture") == "qwen2" if v is None else v

    @model_validator(mode="after")
    def _needs_a_source(self):
        if self.hf_path is not None:
            return self  # the loader fills the unset fields from <hf_path>/config.json
        if self.num_layers is None:
            raise ValueError(
                "model needs either model.hf_path (a local HF checkpoint) or an architecture "
                "(include a preset from configs/models/, e.g. include: [models/qwen2.5-0.5b.yaml])"
            )
        missing = [f for f in self.SHAPE_FIELDS if getattr(self, f) is None]
        if missing:
            raise ValueError(
                f"model.{missing[0]} is not set: spell out {', '.join(missing)} or set model.hf_path"
            )
        return self

    @property
    def kv_channels(self) -> Optional[int]:
        """Per-head dimension: head_dim when given, else hidden_size / num_attention_heads."""
        if self.head_dim is not None:
            return self.head_dim
        if self.hidden_size is None or not self.num_attention_heads:
            return None
        return self.hidden_size // self.num_attention_heads


class ClusterConfig(Section):
    nnodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(1, ge=1)
    gpu_memory_gb: float = Field(80.0, gt=0)  # per GPU, in GiB (an H100 80GB: 80); `megatron-rl plan` budgets it

    @property
    def world_size(self) -> int:
        return self.nnodes * self.gpus_per_node


class ParallelConfig(Section):
    """Training layout. Data parallel size is derived: world / (tensor * pipeline * context)."""

    tensor: int = Field(1, ge=1)
    pipeline: int = Field(1, ge=1)
    virtual_pipeline: Optional[int] = Field(None, ge=1)
    context: int = Field(1, ge=1)
    expert: int = Field(1, ge=1)
    sequence_parallel: bool = False

    @model_validator(mode="after")
    def _local_rules(self):
        if self.sequence_parallel and self.tensor == 1:
            raise ValueError("parallel.sequence_parallel needs parallel.tensor > 1: set it false or raise tensor")
        if self.virtual_pipeline is not None and self.virtual_pipeline > 1 and self.pipeline == 1:
            raise ValueError("parallel.virtual_pipeline > 1 needs parallel.pipeline > 1: drop it or raise pipeline")
        return self

    @property
    def model_parallel_size(self) -> int:
        return self.tensor * self.pipeline * self.context

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // self.model_parallel_size


class OptimConfig(Section):
    lr: float = Field(1e-6, gt=0)
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    grad_clip: Optional[float] = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    lr_decay: Literal["constant", "linear", "cosine"] = "constant"
    use_distributed_optimizer: bool = True

    @model_validator(mode="after")
    def _min_below_peak(self):
        if self.lr_decay != "constant" and self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} is above lr {self.lr}: lower min_lr or raise lr")
        return self


class CriticOptimConfig(OptimConfig):
    """The critic learns faster than the actor by default (and keeps that default when only other
    optimizer keys are given, which `OptimConfig(lr=1e-5)` as a field default would not)."""

    lr: float = Field(1e-5, gt=0)


class ActorConfig(Section):
    optim: OptimConfig = OptimConfig()
    micro_batch_size: int = Field(1, ge=1)  # sequences per forward on one DP rank
    recompute: Literal["none", "selective", "full"] = "none"


class CriticConfig(Section):
    enabled: bool = False
    init_from: Literal["actor", "reward"] = "actor"
    optim: CriticOptimConfig = CriticOptimConfig()
    micro_batch_size: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)  # critic-only updates before the actor starts


class ReferenceConfig(Section):
    enabled: bool = True
    reset_every: Optional[int] = Field(None, ge=1)  # copy actor -> reference every N steps (R1)


class DistillConfig(Section):
    """On-policy distillation: a frozen teacher (an HF *ForCausalLM with the policy's tokenizer) in
    its own Megatron role scores the student's samples; per-token advantage coef * (log p_teacher -
    log p_student), added to the algorithm's advantages or alone."""

    enabled: bool = False
    teacher_path: Optional[str] = None
    coef: float = Field(1.0, gt=0)
    mode: Literal["add", "alone"] = "add"  # alone: the task reward's advantages are not used

    @model_validator(mode="after")
    def _needs_a_teacher(self):
        if self.enabled and not self.teacher_path:
            raise ValueError("distill.enabled needs distill.teacher_path: a Hugging Face checkpoint directory of "
                             "the teacher (same tokenizer as the policy)")
        return self


class RewardSource(Section):
    type: Literal["math", "format", "language", "python", "reward_model", "remote", "code"]
    weight: float = 1.0
    path: Optional[str] = None  # `module:function` for python, checkpoint for reward_model, URL for remote
    pattern: Optional[str] = None  # format: regex the whole response must match; default: R1's think/answer layout
    language: Optional[str] = None  # language: target (en, zh, latin, cjk); default: the prompt's script
    # reward_model: none (default) = raw scores; running = (score - running mean) / running std over
    # every score seen so far (restarted when the model is retrained, rm.iterative)
    normalize: Optional[Literal["none", "running"]] = None
    # python: one score per step of the response (process supervision, algorithm.advantage grpo_process)
    per_step: bool = False
    # remote (docs/rewards.md): samples per POST, seconds per request, retries on connection errors / 5xx
    batch_size: Optional[int] = Field(None, ge=1)  # default 32
    request_timeout_s: Optional[float] = Field(None, gt=0)  # default 30
    retries: Optional[int] = Field(None, ge=0, le=10)  # default 2
    # code: per-run wall clock (the CPU limit is the same, rounded up) and address space of a program
    time_limit_s: Optional[float] = Field(None, gt=0)  # default 5
    memory_mb: Optional[int] = Field(None, ge=64)  # default 1024
    # code: run even where the kernel-level layers (namespaces, read-only mounts, seccomp) are
    # missing, with the Python audit hook as the only guard (docs/rewards.md); default: refuse
    weak_sandbox: Optional[bool] = None
    # code: count test blocks other than `assert <expr> == <literal>` (judged inside the program's
    # process, so forgeable); default: such a sample fails with the reason
    unjudged_asserts: Optional[bool] = None

    # field -> the source types that read it
    TYPE_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "batch_size": ("remote",), "request_timeout_s": ("remote",), "retries": ("remote",),
        "time_limit_s": ("code",), "memory_mb": ("code",), "weak_sandbox": ("code",), "unjudged_asserts": ("code",),
        "normalize": ("reward_model",),
    }

    @model_validator(mode="after")
    def _fields_of_the_type(self):
        for name, types in self.TYPE_FIELDS.items():
            if getattr(self, name) is not None and self.type not in types:
                raise ValueError(f"{name} applies to type {' / '.join(types)} only, not '{self.type}': remove it")
        if self.type == "remote" and self.path and not str(self.path).startswith(("http://", "https://")):
            raise ValueError(f"type 'remote' needs path: the reward server's http(s) URL, got {self.path!r} "
                             "(e.g. http://localhost:8000/score)")
        return self

    @model_validator(mode="after")
    def _path_when_needed(self):
        if self.type in ("python", "reward_model", "remote") and not self.path:
            raise ValueError(
                f"type '{self.type}' needs 'path' (module:function for python, a checkpoint for "
                "reward_model, a URL for remote)"
            )
        return self


class RewardConfig(Section):
    sources: list[RewardSource] = [RewardSource(type="math")]
    timeout_s: float = Field(10.0, gt=0)
    workers: int = Field(4, ge=1)


class SamplingConfig(Section):
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = -1  # -1: off
    max_new_tokens: int = Field(1024, ge=1)
    stop: list[str] = []
    stop_token_ids: list[int] = []

    @field_validator("top_k")
    @classmethod
    def _top_k_off_or_positive(cls, v):
        if v == 0 or v < -1:
            raise ValueError("top_k must be -1 (off) or at least 1")
        return v


class EvalSamplingConfig(SamplingConfig):
    """Greedy by default (kept when only other eval sampling keys are given)."""

    temperature: float = Field(0.0, ge=0)


class SGLangConfig(Section):
    """SGLang servers, launched by global rank 0 (or attached to with `urls`), and the client's and
    the weight transports' settings. `${run.output_dir}` in the paths is resolved by the loader."""

    # Flags of `sglang.launch_server` that the launcher sets from other keys (argparse keeps the last
    # value, so a copy in extra_args would silently win): flag -> the key to set instead.
    MANAGED_FLAGS: ClassVar[dict[str, str]] = {
        "--model-path": "model.hf_path", "--model": "model.hf_path", "--host": "rollout.sglang.host",
        "--port": "rollout.sglang.base_port", "--tp-size": "rollout.sglang.tp_size",
        "--tensor-parallel-size": "rollout.sglang.tp_size", "--tp": "rollout.sglang.tp_size",
        "--dp-size": "rollout.sglang.num_servers (each server has dp 1: weight updates assert it)",
        "--data-parallel-size": "rollout.sglang.num_servers (each server has dp 1: weight updates assert it)",
        "--dp": "rollout.sglang.num_servers (each server has dp 1: weight updates assert it)",
        "--base-gpu-id": "rollout.sglang.base_gpu_id", "--mem-fraction-static": "rollout.sglang.mem_fraction",
        "--random-seed": "rollout.sglang.seed", "--enable-memory-saver": "rollout.sglang.enable_memory_saver",
        "--device": "rollout.sglang.device", "--max-total-tokens": "rollout.sglang.max_total_tokens",
    }

    @staticmethod
    def _http_url(url: str) -> str:
        """`url` without a trailing slash, or a ValueError saying what is wrong (the launcher's rule)."""
        from urllib.parse import urlparse

        parsed = urlparse(str(url))
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.scheme not in ("http", "https") or not parsed.hostname or port is None:
            raise ValueError(f"{url!r} is not an http://host:port URL; write it like http://10.0.0.1:30010")
        if parsed.path not in ("", "/") or parsed.query:
            raise ValueError(f"{url!r} has a path; give the server's root, like http://{parsed.netloc}")
        return f"{parsed.scheme}://{parsed.netloc}"

    # where the servers are
    urls: list[str] = []  # attach to running servers; empty: launch `num_servers` of them
    router_url: Optional[str] = None  # attach to a running sglang-router in front of `urls`
    num_servers: int = Field(1, ge=1)
    tp_size: int = Field(1, ge=1)
    mem_fraction: float = Field(0.8, gt=0, le=1)
    enable_memory_saver: bool = True
    host: str = "127.0.0.1"  # the servers bind here (0.0.0.0: reachable from other nodes)
    base_port: int = Field(30010, ge=1, le=65535)  # server i listens on base_port + i
    base_gpu_id: int = Field(0, ge=0)  # server i uses GPUs base_gpu_id + i*tp_size .. + tp_size - 1
    router: Literal["auto"] | bool = "auto"  # auto: launch sglang-router when >1 server and installed
    router_port: int = Field(30000, ge=1, le=65535)
    router_policy: Literal["cache_aware", "round_robin", "random", "power_of_two"] = "cache_aware"
    extra_args: list[str] = []  # more `sglang.launch_server` flags, e.g. ["--dtype", "bfloat16"]
    seed: Optional[int] = None  # server i gets seed + i; None: run.seed
    log_dir: str = "${run.output_dir}/sglang"  # sglang-server-<i>.log, sglang-router.log
    # auto: cuda when this process sees a GPU, else cpu (torch-native attention, no memory saver,
    # loopback only; the environment launch/sglang_env.sh makes)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # the interpreter of the SGLang server environment; None: $MEGATRON_RL_SGLANG_PYTHON, else this one
    python: Optional[str] = None
    # KV-cache tokens per server (--max-total-tokens); None: SGLang sizes it from mem_fraction on a
    # GPU, CPU_MAX_TOTAL_TOKENS on the CPU (where mem_fraction would take a share of the host's RAM)
    max_total_tokens: Optional[int] = Field(None, ge=64)
    # the client and the restarts
    health_timeout_s: float = Field(600.0, gt=0)  # a (re)started server must be healthy within this
    request_timeout_s: float = Field(1800.0, gt=0)  # one /generate request
    max_retries: int = Field(3, ge=0)  # per request, on connection errors, timeouts, 5xx, aborts
    max_restarts: int = Field(3, ge=0)  # per launched server over the run (dead or hung server)
    max_concurrency: int = Field(256, ge=1)  # sequences in flight over all servers
    # the weight transports
    disk_root: str = "${run.output_dir}/weights"  # weight_sync disk: a path the servers see too
    nccl_master_address: Optional[str] = None  # weight_sync nccl: how the servers reach the trainer
    nccl_port: Optional[int] = Field(None, ge=1, le=65535)  # stage s uses nccl_port + s; None: a free port

    @field_validator("urls")
    @classmethod
    def _urls_are_server_roots(cls, v):
        return [cls._http_url(u) for u in v]

    @field_validator("router_url")
    @classmethod
    def _router_url_is_a_root(cls, v):
        return None if v is None else cls._http_url(v)

    @field_validator("router", mode="before")
    @classmethod
    def _router_auto_or_bool(cls, v):
        if isinstance(v, str) and v.strip().lower() in ("auto", "true", "false"):
            return {"auto": "auto", "true": True, "false": False}[v.strip().lower()]
        if v == "auto" or isinstance(v, bool):
            return v
        raise ValueError(f"{v!r} is not one of auto, true, false")

    @field_validator("host")
    @classmethod
    def _host_given(cls, v):
        if not v.strip():
            raise ValueError("empty: give an address to bind, e.g. 127.0.0.1 or 0.0.0.0")
        return v

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, v):
        for arg in v:
            flag = str(arg).split("=", 1)[0]
            if flag in cls.MANAGED_FLAGS:
                raise ValueError(f"{flag} is set by the launcher: remove it and set {cls.MANAGED_FLAGS[flag]}")
        return v

    @model_validator(mode="after")
    def _servers_fit(self):
        if self.router_url and not self.urls:
            raise ValueError("rollout.sglang.router_url needs rollout.sglang.urls (the servers behind it: weight "
                             "updates go to every server, not through the router)")
        if self.urls:
            if self.router is True and not self.router_url:
                raise ValueError("rollout.sglang.router true launches a router in front of launched servers; with "
                                 "rollout.sglang.urls give the running router as rollout.sglang.router_url")
            return self
        last = self.base_port + self.num_servers - 1
        if last > 65535:
            raise ValueError(f"rollout.sglang.base_port {self.base_port} + num_servers {self.num_servers} runs past "
                             "port 65535: lower base_port")
        if self.router is not False and self.base_port <= self.router_port <= last:
            raise ValueError(f"rollout.sglang.router_port {self.router_port} is a server's port (base_port "
                             f"{self.base_port} .. {last}): move router_port or base_port")
        return self


class RolloutConfig(Section):
    engine: Literal["embedded", "sglang"] = "embedded"
    placement: Literal["colocated", "disaggregated"] = "colocated"
    n_samples_per_prompt: int = Field(8, ge=1)
    sampling: SamplingConfig = SamplingConfig()
    eval_sampling: EvalSamplingConfig = EvalSamplingConfig()
    # auto: embedded -> in_process; sglang colocated -> tensor; sglang disaggregated -> nccl
    weight_sync: Literal["auto", "in_process", "tensor", "nccl", "disk"] = "auto"
    bucket_mb: int = Field(512, ge=1)
    check_parity: bool = False
    sglang: SGLangConfig = SGLangConfig()


class CISPOConfig(Section):
    is_high: float = Field(0.2, gt=0)  # the importance weight is capped at 1 + is_high
    is_low: Optional[float] = Field(None, gt=0, lt=1)  # floor 1 - is_low; None: no floor (MiniMax-M1)


class SAPOConfig(Section):
    tau_pos: float = Field(1.0, gt=0)  # gate temperature for positive advantages (verl's default)
    tau_neg: float = Field(1.05, gt=0)  # and for the others


class GMPOConfig(Section):
    clip_low: float = Field(0.4, gt=0)  # per-token log-ratio floor (A < 0), in log space
    clip_high: float = Field(0.4, gt=0)  # per-token log-ratio cap (A > 0)


class DPPOConfig(Section):
    divergence: Literal["tv", "kl"] = "tv"
    delta_low: float = Field(0.2, gt=0)  # region bounds (ours; tune them): probability shift for tv,
    delta_high: float = Field(0.2, gt=0)  # binary KL for kl
    anchor: Literal["rollout", "old"] = "rollout"  # the region's centre: engine logprobs or the trainer's pre-update ones
    ratio_cap: float = Field(10.0, gt=1)  # cap on the detached importance weight p / p_anchor


class ProcessConfig(Section):
    """Process supervision (algorithm.advantage grpo_process): where a response's steps end."""

    step_separator: str = Field("\n", min_length=1)  # a step ends with the token that completes it


class PolicyLossConfig(Section):
    kind: Literal["ppo", "cispo", "sapo", "gmpo", "dppo"] = "ppo"  # algorithms/objectives
    clip_low: float = Field(0.2, ge=0, lt=1)
    clip_high: float = Field(0.2, ge=0)
    dual_clip: Optional[float] = Field(None, gt=1)  # lower bound c > 1 on the loss of negative advantages
    ratio: RatioLevel = "token"  # token: PPO/GRPO; sequence: GSPO; sequence-token: GSPO-token
    log_ratio_clamp: float = Field(20.0, gt=0)  # token log-ratio, before exp
    seq_log_ratio_clamp: float = Field(10.0, gt=0)  # GSPO's sequence log-ratio (verl: 10)
    cispo: CISPOConfig = CISPOConfig()
    sapo: SAPOConfig = SAPOConfig()
    gmpo: GMPOConfig = GMPOConfig()
    dppo: DPPOConfig = DPPOConfig()


class KLConfig(Section):
    placement: Literal["none", "reward", "loss"] = "none"  # reward: PPO penalty; loss: GRPO term
    estimator: KLEstimator = "low_var_kl"
    coef: float = Field(0.001, ge=0)
    controller: Literal["fixed", "adaptive"] = "fixed"
    target: Optional[float] = Field(None, gt=0)  # adaptive controller's target KL
    horizon: int = Field(10000, ge=1)


class ValueConfig(Section):
    clip: Optional[float] = Field(0.2, gt=0)
    coef: float = Field(1.0, gt=0)


class DynamicSamplingConfig(Section):
    enabled: bool = False
    max_rounds: int = Field(10, ge=1)  # extra generation rounds before giving up on a full batch


class OverlongConfig(Section):
    enabled: bool = False
    buffer_len: int = Field(512, ge=1)  # L_cache: soft-penalty zone before max_new_tokens
    penalty: float = Field(1.0, ge=0)


class MismatchConfig(Section):
    """Train/inference mismatch correction from rollout logprobs."""

    mode: Literal["none", "truncate", "mask"] = "none"  # truncated IS (TIS) or masked IS (MIS)
    level: Literal["token", "sequence", "geometric"] = "token"
    upper: float = Field(2.0, gt=1)
    lower: Optional[float] = Field(None, gt=0, lt=1)


class AlgorithmConfig(Section):
    advantage: AdvantageEstimator = "grpo"
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(1.0, ge=0, le=1)
    norm_adv_by_std: bool = True  # false: Dr.GRPO
    whiten_advantages: bool = True  # GAE: masked whitening over the batch
    policy_loss: PolicyLossConfig = PolicyLossConfig()
    loss_agg: LossAgg = "token-mean"
    entropy_coef: float = Field(0.0, ge=0)
    kl: KLConfig = KLConfig()
    value: ValueConfig = ValueConfig()
    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    overlong: OverlongConfig = OverlongConfig()
    mismatch: MismatchConfig = MismatchConfig()
    process: ProcessConfig = ProcessConfig()
    prompts_per_step: int = Field(32, ge=1)  # global batch, in prompts
    mini_batch_prompts: int = Field(32, ge=1)  # one optimizer step, in prompts
    epochs: int = Field(1, ge=1)  # passes over one rollout batch


class DataConfig(Section):
    train_path: Optional[str] = None
    eval_path: Optional[str] = None
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    max_prompt_len: int = Field(1024, ge=1)
    apply_chat_template: bool = True
    shuffle: bool = True
    tokenizer: Optional[str] = None  # a local HF tokenizer directory; default: model.hf_path
    eval_max_prompts: Optional[int] = Field(None, ge=1)  # evaluate on the first N eval prompts


class CheckpointConfig(Section):
    dir: str = "${run.output_dir}/checkpoints"
    save_every: Optional[int] = Field(None, ge=1)
    keep_last: int = Field(2, ge=1)
    resume: Literal["auto", "never"] = "auto"


class LoggingConfig(Section):
    log_every: int = Field(1, ge=1)
    jsonl: bool = True
    tensorboard: bool = False
    wandb_project: Optional[str] = None
    plot: bool = True


class TrainerConfig(Section):
    total_steps: int = Field(100, ge=1)
    eval_every: Optional[int] = Field(None, ge=1)  # also evaluates before the first step
    eval_pass_k: Optional[int] = Field(None, ge=2)  # pass@k on the eval set with rollout.sampling
    skip_nonfinite: bool = True  # a non-finite loss skips that update (reported) instead of stopping


class SFTConfig(Section):
    """Supervised fine-tuning (`megatron-rl sft`): prompt -> response pairs, token cross-entropy on
    the response. The result is exported as an HF checkpoint that RL starts from (model.hf_path)."""

    train_path: Optional[str] = None  # JSONL / Parquet with data.prompt_key and response_key
    response_key: str = "response"
    steps: int = Field(200, ge=1)
    batch_size: int = Field(64, ge=1)  # sequences per optimizer step (global)
    micro_batch_size: int = Field(16, ge=1)
    optim: OptimConfig = OptimConfig(lr=1e-5)
    output_dir: str = "${run.output_dir}/sft"  # HF export: <output_dir>/hf
    log_every: int = Field(10, ge=1)


class IterativeRMConfig(Section):
    """Iterative RL (DeepSeekMath 4.1.4): during RL, retrain the reward model on preference pairs
    from the policy's own samples, then reset the reference to the policy. Off by default."""

    enabled: bool = False
    every: int = Field(50, ge=1)  # RL steps between retrains (pairs come from those steps' samples)
    steps: int = Field(10, ge=1)  # reward-model optimizer steps per retrain, rm.batch_size pairs each
    replay_fraction: float = Field(0.1, ge=0, lt=1)  # share of older pairs in a retrain's mix
    buffer_size: int = Field(4096, ge=1)  # older pairs kept for replay (oldest dropped first)
    reset_reference: bool = True  # reference := policy after each retrain


class RMConfig(Section):
    """Reward-model training (`megatron-rl rm`): Bradley-Terry on pairwise preferences with the
    Megatron `reward` role, exported as an HF *ForSequenceClassification checkpoint that a
    `reward_model` reward source loads. `iterative` retrains it inside an RL run."""

    train_path: Optional[str] = None  # JSONL / Parquet rows with data.prompt_key, chosen_key, rejected_key
    eval_path: Optional[str] = None  # held-out pairs: accuracy, loss, margin
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    max_length: int = Field(2048, ge=2)  # tokens of prompt + response + EOS; longer pairs are dropped
    steps: int = Field(200, ge=1)
    batch_size: int = Field(64, ge=1)  # pairs per optimizer step (global)
    micro_batch_size: int = Field(8, ge=1)  # pairs per forward on one DP rank (2x rows)
    margin: float = 0.0  # loss = -log sigmoid(r_chosen - r_rejected - margin)
    optim: OptimConfig = OptimConfig(lr=1e-5)
    output_dir: str = "${run.output_dir}/rm"  # HF export: <output_dir>/hf
    log_every: int = Field(10, ge=1)
    eval_every: Optional[int] = Field(None, ge=1)  # also at the end whenever eval_path is set
    iterative: IterativeRMConfig = IterativeRMConfig()


class RunConfig(Section):
    run: RunSection = RunSection()
    model: ModelConfig
    cluster: ClusterConfig = ClusterConfig()
    parallel: ParallelConfig = ParallelConfig()
    actor: ActorConfig = ActorConfig()
    critic: CriticConfig = CriticConfig()
    reference: ReferenceConfig = ReferenceConfig()
    reward: RewardConfig = RewardConfig()
    rollout: RolloutConfig = RolloutConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    data: DataConfig = DataConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    trainer: TrainerConfig = TrainerConfig()
    sft: SFTConfig = SFTConfig()
    rm: RMConfig = RMConfig()
    distill: DistillConfig = DistillConfig()

    @model_validator(mode="after")
    def _reward_model_sources(self):
        models = [i for i, s in enumerate(self.reward.sources) if s.type == "reward_model"]
        if len(models) > 1:
            raise ValueError(f"reward.sources[{models[1]}]: only one source of type reward_model is supported: "
                             "remove the others")
        if self.rm.iterative.enabled:
            if not models:
                raise ValueError("rm.iterative.enabled retrains a reward model: add a reward.sources entry of "
                                 "type reward_model or set rm.iterative.enabled=false")
            if not any(s.type != "reward_model" and s.weight > 0 for s in self.reward.sources):
                raise ValueError("rm.iterative.enabled builds preference pairs from rule-based scores: add a "
                                 "reward.sources entry that is not a reward_model (e.g. {type: math})")
        return self
