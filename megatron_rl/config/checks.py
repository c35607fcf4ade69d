"""Checks that span sections of a RunConfig: one rule per function, each returns None or one line
naming the key(s) and the fix. `check_run` runs them all and raises the first failure.

A rule only fires on a real contradiction (something that cannot train or would train wrong);
unusual-but-valid combinations (a critic beside a group estimator, mismatch correction with any
estimator, an SGLang engine colocated with training) pass.
"""
from __future__ import annotations

from typing import Callable, Optional

from .errors import ConfigError
from .schema import GROUP_ESTIMATORS, RunConfig

Rule = Callable[[RunConfig, int], Optional[str]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def world_size_of(cfg: RunConfig, world_size: Optional[int] = None) -> int:
    return world_size if world_size is not None else cfg.cluster.world_size


def data_parallel_size(cfg: RunConfig, world: int) -> Optional[int]:
    """world / (tensor * pipeline * context), or None when that does not divide."""
    mp = cfg.parallel.model_parallel_size
    return world // mp if world % mp == 0 else None


# --- parallel layout --------------------------------------------------------------------------


@rule
def world_divides_into_layout(c: RunConfig, world: int):
    p = c.parallel
    if data_parallel_size(c, world) is None:
        return (f"parallel.tensor*pipeline*context = {p.tensor}*{p.pipeline}*{p.context} = "
                f"{p.model_parallel_size} does not divide the world size {world}: change parallel.* or "
                "cluster.nnodes*cluster.gpus_per_node (data parallel = world / (tensor*pipeline*context))")


@rule
def layers_split_over_stages(c: RunConfig, world: int):
    m, p = c.model, c.parallel
    if m.num_layers is None:
        return None
    if m.num_layers % p.pipeline:
        return (f"model.num_layers {m.num_layers} is not divisible by parallel.pipeline {p.pipeline}: "
                "pick a pipeline size that divides the layer count")
    if p.virtual_pipeline and m.num_layers % (p.pipeline * p.virtual_pipeline):
        return (f"model.num_layers {m.num_layers} is not divisible by parallel.pipeline*virtual_pipeline "
                f"= {p.pipeline * p.virtual_pipeline}: pick a virtual_pipeline that divides "
                f"{m.num_layers // p.pipeline} layers per stage")


@rule
def heads_split_over_tensor(c: RunConfig, world: int):
    m, tp = c.model, c.parallel.tensor
    if m.num_attention_heads is None:
        return None
    if m.num_attention_heads % tp:
        return (f"model.num_attention_heads {m.num_attention_heads} is not divisible by parallel.tensor "
                f"{tp}: use a tensor size that divides the head count")
    if m.num_query_groups and m.num_query_groups % tp:
        return (f"model.num_query_groups {m.num_query_groups} (KV heads) is not divisible by "
                f"parallel.tensor {tp}: use a tensor size that divides the KV head count")


@rule
def heads_split_into_groups(c: RunConfig, world: int):
    m = c.model
    if m.num_attention_heads and m.num_query_groups and m.num_attention_heads % m.num_query_groups:
        return (f"model.num_attention_heads {m.num_attention_heads} is not divisible by "
                f"model.num_query_groups {m.num_query_groups}: each KV group must serve whole query heads")


@rule
def hidden_splits_into_heads(c: RunConfig, world: int):
    m = c.model
    if m.head_dim is None and m.hidden_size and m.num_attention_heads and m.hidden_size % m.num_attention_heads:
        return (f"model.hidden_size {m.hidden_size} is not divisible by model.num_attention_heads "
                f"{m.num_attention_heads}: set model.head_dim")


@rule
def ffn_splits_over_tensor(c: RunConfig, world: int):
    m, tp = c.model, c.parallel.tensor
    if m.ffn_hidden_size and m.ffn_hidden_size % tp:
        return (f"model.ffn_hidden_size {m.ffn_hidden_size} is not divisible by parallel.tensor {tp}: "
                "use a tensor size that divides it")


@rule
def experts_need_moe(c: RunConfig, world: int):
    if c.parallel.expert > 1:
        return (f"parallel.expert {c.parallel.expert}: expert parallelism needs a mixture-of-experts model "
                f"and model.architecture '{c.model.architecture}' is dense: set parallel.expert=1")


@rule
def context_parallel_is_not_built(c: RunConfig, world: int):
    # the groups would form, but no sequence is split over them: each CP rank would train on whole
    # rows and the gradients would be wrong
    if c.parallel.context > 1:
        return (f"parallel.context {c.parallel.context}: context parallelism is not built yet (sequences are not "
                "split over context-parallel ranks): set parallel.context=1")


@rule
def sequences_fit_the_model(c: RunConfig, world: int):
    limit = c.model.max_position_embeddings
    samplings = ["sampling"] + (["eval_sampling"] if c.trainer.eval_every else [])
    for name in samplings:
        seq = c.data.max_prompt_len + getattr(c.rollout, name).max_new_tokens
        if seq > limit:
            return (f"data.max_prompt_len + rollout.{name}.max_new_tokens = {seq} exceeds "
                    f"model.max_position_embeddings {limit}: shorten them")


# --- algorithm against the roles ---------------------------------------------------------------


@rule
def gae_needs_a_critic(c: RunConfig, world: int):
    if c.algorithm.advantage == "gae" and not c.critic.enabled:
        return ("algorithm.advantage 'gae' needs a value model: set critic.enabled=true "
                "(or use a critic-free estimator such as grpo)")


@rule
def critic_from_reward_needs_a_reward_model(c: RunConfig, world: int):
    if c.critic.enabled and c.critic.init_from == "reward":
        if not any(s.type == "reward_model" for s in c.reward.sources):
            return ("critic.init_from 'reward' needs a reward.sources entry of type reward_model: "
                    "add one or set critic.init_from=actor")


@rule
def groups_need_several_samples(c: RunConfig, world: int):
    n = c.rollout.n_samples_per_prompt
    if c.algorithm.advantage in GROUP_ESTIMATORS and n < 2:
        return (f"algorithm.advantage '{c.algorithm.advantage}' compares samples of one prompt: "
                f"rollout.n_samples_per_prompt is {n}, set it to 2 or more")


@rule
def dynamic_sampling_needs_groups(c: RunConfig, world: int):
    if c.algorithm.dynamic_sampling.enabled and c.algorithm.advantage not in GROUP_ESTIMATORS:
        return (f"algorithm.dynamic_sampling.enabled filters groups with equal rewards and needs a group "
                f"estimator ({', '.join(GROUP_ESTIMATORS)}), not algorithm.advantage "
                f"'{c.algorithm.advantage}': disable it or change the estimator")


@rule
def clip_options_belong_to_ppo(c: RunConfig, world: int):
    pl = c.algorithm.policy_loss
    if pl.kind != "ppo" and (pl.dual_clip is not None or pl.ratio != "token"):
        return (f"algorithm.policy_loss.kind '{pl.kind}' has its own trust region: dual_clip and ratio "
                f"'{pl.ratio}' are options of kind 'ppo' (unset them, or set kind=ppo)")


@rule
def process_supervision_needs_step_rewards(c: RunConfig, world: int):
    per_step = [i for i, s in enumerate(c.reward.sources) if s.per_step]
    if c.algorithm.advantage == "grpo_process" and not per_step:
        return ("algorithm.advantage 'grpo_process' needs a reward.sources entry with per_step: true (a python "
                "function returning one score per step): add one, or use 'grpo'")
    if per_step and c.algorithm.advantage != "grpo_process":
        return (f"reward.sources[{per_step[0]}].per_step scores each step, which only algorithm.advantage "
                "'grpo_process' uses: set it, or per_step=false")
    wrong = [i for i in per_step if c.reward.sources[i].type != "python"]
    if wrong:
        return (f"reward.sources[{wrong[0]}].per_step: only sources of type python score per step: "
                "set per_step=false there")


@rule
def dynamic_sampling_sees_rule_scores_only(c: RunConfig, world: int):
    # the filter runs on rank 0 before the reward model scores on every rank: it would keep or drop
    # groups on the rule-based part of a score the update does not train on alone
    if c.algorithm.dynamic_sampling.enabled and any(s.type == "reward_model" for s in c.reward.sources):
        return ("algorithm.dynamic_sampling.enabled with a reward.sources entry of type reward_model is not built "
                "yet (the filter would see the rule-based scores only): disable dynamic sampling or the reward model")


@rule
def kl_needs_a_reference(c: RunConfig, world: int):
    kl = c.algorithm.kl
    if kl.placement != "none" and not c.reference.enabled:
        return (f"algorithm.kl.placement '{kl.placement}' needs the reference model: set "
                "reference.enabled=true or algorithm.kl.placement=none")


@rule
def adaptive_kl_needs_reward_placement_and_target(c: RunConfig, world: int):
    kl = c.algorithm.kl
    if kl.controller != "adaptive":
        return None
    if kl.placement != "reward":
        return (f"algorithm.kl.controller 'adaptive' adjusts a KL penalty in the reward: set "
                f"algorithm.kl.placement=reward (it is '{kl.placement}') or controller=fixed")
    if kl.target is None:
        return "algorithm.kl.controller 'adaptive' needs algorithm.kl.target (the KL to steer to): set it"


@rule
def overlong_buffer_inside_generation(c: RunConfig, world: int):
    o, max_new = c.algorithm.overlong, c.rollout.sampling.max_new_tokens
    if o.enabled and o.buffer_len >= max_new:
        return (f"algorithm.overlong.buffer_len {o.buffer_len} must be below rollout.sampling.max_new_tokens "
                f"{max_new}: shrink the buffer or generate longer")


# --- batch arithmetic ---------------------------------------------------------------------------


@rule
def step_splits_into_mini_batches(c: RunConfig, world: int):
    a = c.algorithm
    if a.prompts_per_step % a.mini_batch_prompts:
        return (f"algorithm.prompts_per_step {a.prompts_per_step} is not divisible by "
                f"algorithm.mini_batch_prompts {a.mini_batch_prompts}: make mini_batch_prompts a divisor")


@rule
def sequences_split_over_data_parallel(c: RunConfig, world: int):
    dp = data_parallel_size(c, world)
    if dp is None:
        return None
    a, n = c.algorithm, c.rollout.n_samples_per_prompt
    for name, prompts in (("prompts_per_step", a.prompts_per_step), ("mini_batch_prompts", a.mini_batch_prompts)):
        if (prompts * n) % dp:
            return (f"algorithm.{name} * rollout.n_samples_per_prompt = {prompts}*{n} = {prompts * n} "
                    f"sequences is not divisible by the data-parallel size {dp} "
                    f"(world {world} / tensor*pipeline*context {c.parallel.model_parallel_size}): adjust them")


@rule
def mini_batch_splits_into_micro_batches(c: RunConfig, world: int):
    dp = data_parallel_size(c, world)
    seqs = c.algorithm.mini_batch_prompts * c.rollout.n_samples_per_prompt
    if dp is None or seqs % dp:
        return None
    per_rank = seqs // dp
    roles = [("actor", c.actor.micro_batch_size)]
    if c.critic.enabled:
        roles.append(("critic", c.critic.micro_batch_size))
    for role, mbs in roles:
        if per_rank % mbs:
            return (f"{role}.micro_batch_size {mbs} does not divide the {per_rank} sequences of one "
                    f"mini-batch per data-parallel rank (mini_batch_prompts*n_samples_per_prompt/DP = "
                    f"{seqs}/{dp}): pick a divisor")


# --- rollout ----------------------------------------------------------------------------------

# What `rollout.weight_sync: auto` becomes, by (engine, placement). Disk is never chosen: ask for it.
WEIGHT_SYNC_AUTO = {
    ("embedded", "colocated"): "in_process",  # the engine lives in the trainer's rank 0
    ("sglang", "colocated"): "tensor",  # servers on the trainer's node: CUDA-IPC handles
    ("sglang", "disaggregated"): "nccl",  # servers on other GPUs / nodes: broadcasts
}


def resolve_weight_sync(rollout) -> str:
    """The transport a RolloutConfig asks for, `auto` resolved by WEIGHT_SYNC_AUTO (an embedded
    disaggregated rollout, which `embedded_engine_is_colocated` refuses, resolves to in_process)."""
    if rollout.weight_sync != "auto":
        return rollout.weight_sync
    return WEIGHT_SYNC_AUTO.get((rollout.engine, rollout.placement), "in_process")


def weight_sync_problem(rollout) -> Optional[str]:
    """None, or one line naming rollout.weight_sync and the fix when the explicit choice cannot reach
    the engine where it is placed (the factory raises it as a ConfigError too)."""
    ws, engine, placement = rollout.weight_sync, rollout.engine, rollout.placement
    if ws == "auto":
        return None
    if engine == "embedded" and ws != "in_process":
        return (f"rollout.weight_sync '{ws}' sends weights to SGLang servers, but rollout.engine is 'embedded' "
                "(it takes them in process): set rollout.weight_sync=auto (or in_process), or rollout.engine=sglang")
    if engine != "embedded" and ws == "in_process":
        return (f"rollout.weight_sync 'in_process' only reaches the embedded engine, not rollout.engine "
                f"'{engine}': use auto, tensor, nccl or disk")
    if ws == "tensor" and placement == "disaggregated":
        return ("rollout.weight_sync 'tensor' hands CUDA-IPC handles to servers on the trainer's own node and "
                "GPUs, but rollout.placement is 'disaggregated': set rollout.weight_sync=auto (nccl) or disk, "
                "or rollout.placement=colocated")
    s = rollout.sglang
    if ws == "nccl" and placement == "colocated" and not s.urls and s.base_gpu_id == 0:
        return ("rollout.weight_sync 'nccl' with colocated servers puts the trainer's rank 0 and server 0's first "
                "rank on GPU 0, and NCCL refuses two ranks of one group on one GPU: set rollout.weight_sync=auto "
                "(tensor) or disk, or move the servers off GPU 0 with rollout.sglang.base_gpu_id")
    return None


@rule
def embedded_engine_is_colocated(c: RunConfig, world: int):
    r = c.rollout
    if r.engine == "embedded" and r.placement == "disaggregated":
        return ("rollout.placement 'disaggregated' needs rollout.engine=sglang: the embedded engine runs "
                "inside the training processes (set placement=colocated or engine=sglang)")


@rule
def weight_sync_reaches_the_engine(c: RunConfig, world: int):
    return weight_sync_problem(c.rollout)


@rule
def launched_sglang_needs_a_checkpoint(c: RunConfig, world: int):
    r = c.rollout
    if r.engine == "sglang" and not r.sglang.urls and not c.model.hf_path:
        return ("rollout.engine 'sglang' launches its servers from model.hf_path (an HF checkpoint with its "
                "tokenizer), which is not set: set model.hf_path, or attach to running servers with "
                "rollout.sglang.urls")


def run_errors(cfg: RunConfig, world_size: Optional[int] = None) -> list[str]:
    world = world_size_of(cfg, world_size)
    return [msg for msg in (check(cfg, world) for check in RULES) if msg]


def check_run(cfg: RunConfig, world_size: Optional[int] = None) -> None:
    """Raise ConfigError with the first cross-section failure (and how many more there are)."""
    world = world_size_of(cfg, world_size)
    if world < 1:
        raise ConfigError(f"world size {world}: must be at least 1")
    errors = run_errors(cfg, world)
    if errors:
        rest = len(errors) - 1
        more = f" (and {rest} more error{'s' if rest > 1 else ''})" if rest else ""
        raise ConfigError(errors[0] + more)
