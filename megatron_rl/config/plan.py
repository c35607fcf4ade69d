"""`megatron-rl plan`: where every rank and SGLang engine runs, and what each GPU must hold.

Pure arithmetic over a validated RunConfig (no torch, no GPU): `plan(cfg)` returns a `Plan` whose
numbers tests check directly; `format_plan` prints it and `refusal` gives the one-line verdict when
the busiest GPU does not fit, naming the overflow and the knob that fixes it.

What is counted, per GPU (docs/plan.md has the derivations and the measured tolerance):

- weights: parameters of this rank's shard (TP slice of this pipeline stage) x dtype bytes
- gradients: Megatron DDP's fp32 main-grad buffer (grad_reduce_in_fp32), 4 B per parameter
- optimizer: Adam m + v (+ the fp32 master copy when the weights are 16-bit), sharded over DP x CP
  by the distributed optimizer
- activations saved for backward per layer and micro-batch: Korthikanti et al. 2022, "Reducing
  Activation Recomputation in Large Transformer Models" (arXiv 2205.05198, Sec. 4), re-derived
  tensor by tensor for RMSNorm + GQA + SwiGLU without dropout (`layer_activation_terms`); times the
  micro-batches a 1F1B / interleaved pipeline stage keeps in flight
- logits of one micro-batch: the fused one-pass kernel keeps the 16-bit logits and their gradient;
  the unfused reference path materialises fp32 [tokens, vocab/TP] copies
- colocated SGLang: `mem_fraction` of the memory free when the server starts (weights + KV cache),
  released during training (memory saver); disaggregated engines on their own GPUs
- a fixed reserve per process for what is not modelled (CUDA context, NCCL buffers, fragmentation)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import urlparse

from .checks import data_parallel_size, resolve_weight_sync, run_errors, world_size_of
from .layout import RankLayout
from .schema import RunConfig

GiB = 1 << 30
MiB = 1 << 20
# Not modelled, so reserved per process on each GPU: the CUDA context and cuBLAS workspace (~0.5-1 GiB),
# NCCL communicator buffers, the caching allocator's fragmentation.
TRAINER_RESERVE_GIB = 2.0
ENGINE_RESERVE_GIB = 1.0
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
IMPLS = ("te", "local")  # te: TransformerEngine layer spec (GPUs): fused RMSNorm, flash attention
#                          local: Megatron's local spec (CPU, tests): torch RMSNorm, unfused attention
EMBEDDED_MAX_BATCH = 256  # the embedded engine generates this many rows at once (rollout/embedded.py)


def gib(n_bytes: float) -> float:
    return n_bytes / GiB


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    ffn: int
    heads: int
    groups: int  # KV heads
    head_dim: int
    vocab: int
    qkv_bias: bool
    qk_norm: bool
    tied: bool

    @classmethod
    def from_config(cls, m) -> "ModelShape":
        return cls(layers=m.num_layers, hidden=m.hidden_size, ffn=m.ffn_hidden_size, heads=m.num_attention_heads,
                   groups=m.num_query_groups or m.num_attention_heads, head_dim=m.kv_channels, vocab=m.vocab_size,
                   qkv_bias=bool(m.qkv_bias), qk_norm=m.architecture == "qwen3", tied=m.tie_word_embeddings)

    def padded_vocab(self, tp: int) -> int:
        """Megatron's vocab-parallel layers pad the vocab to a multiple of TP (models/builder.py)."""
        return -(-self.vocab // tp) * tp

    def layer_params(self, tp: int = 1) -> int:
        """One transformer layer's parameters on one TP rank (norms are replicated)."""
        h, d = self.hidden, self.head_dim
        qkv_out = (self.heads + 2 * self.groups) * d // tp
        qkv = qkv_out * h + (qkv_out if self.qkv_bias else 0)
        proj = h * self.heads * d // tp
        mlp = 2 * (self.ffn // tp) * h + h * (self.ffn // tp)  # fc1 (gate + up), fc2
        norms = 2 * h + (2 * d if self.qk_norm else 0)
        return qkv + proj + mlp + norms

    def total_params(self) -> int:
        """The whole model (no TP, no padding): what an inference engine loads."""
        embed = self.vocab * self.hidden
        return self.layers * self.layer_params(1) + embed + (0 if self.tied else embed) + self.hidden

    def stage_params(self, tp: int, pp: int, stage: int, value_head: bool = False) -> int:
        """Parameters one rank of pipeline stage `stage` holds (any virtual chunking: same total)."""
        n = self.layers // pp * self.layer_params(tp)
        embed = self.padded_vocab(tp) // tp * self.hidden
        first, last = stage == 0, stage == pp - 1
        if first:
            n += embed
        if last:
            n += self.hidden  # final norm
            if value_head:
                n += self.hidden  # ValueHead [1, hidden], replicated over TP
            elif not self.tied or pp > 1:
                n += embed  # lm_head; tied with PP > 1: the last stage keeps its own copy of the embedding
        return n

    def largest_tensor(self) -> int:
        """Elements of the largest full HF tensor (what weight sync gathers at once)."""
        return max(self.vocab * self.hidden, self.ffn * self.hidden, (self.heads + 2 * self.groups) * self.head_dim
                   * self.hidden)

    def kv_bytes_per_token(self, tp: int, dtype_bytes: int) -> int:
        """An inference engine's KV cache per token on one of its GPUs (KV heads replicated when tp > groups)."""
        return 2 * self.layers * math.ceil(self.groups / tp) * self.head_dim * dtype_bytes


# --- activations -------------------------------------------------------------------------------


def norm_bytes(sb: int, hidden: int, e: int, impl: str) -> int:
    """One RMSNorm's saved tensors, its output included (the next linear saves it).
    te: input + output (e each) + fp32 rstd per token; local (torch): the fp32 input, the fp32
    normalised input, the output (e) + fp32 rstd (with e = 4 the input is its own fp32 copy)."""
    per_elem = 2 * e if impl == "te" else 8 + e
    return per_elem * sb * hidden + 4 * sb


def layer_activation_terms(shape: ModelShape, *, seq: int, micro_batch: int, tp: int = 1, sp: bool = False,
                           dtype_bytes: int = 2, recompute: str = "none", impl: str = "te") -> dict[str, int]:
    """Bytes one transformer layer saves for backward for one micro-batch of `micro_batch` sequences of
    `seq` tokens (already divided by context parallelism), by tensor. With s, b, h, f, a query heads,
    g KV heads, d head dim, t TP, e dtype bytes (Korthikanti et al. 2022 adapted: RMSNorm instead of
    LayerNorm, GQA, SwiGLU, no dropout masks):

      norms    2 x [te: 2e sbh + 4sb | local: (8+e) sbh + 4sb]     (/t with sequence parallelism)
      qkv      e sb d (a + g + (a + 2g)) / t: rotated q and k, and the fused qkv output that v views
               (local, no recompute: q, and k and v expanded to a heads: 3e sbad/t)
      scores   te: fp32 log-sum-exp 4 b a s / t; local: fp32 softmax 4 b a s^2/t (+ its e-byte cast) + mask s^2
      rope     cos and sin for q and k: 4e sd
      proj_in  e sb a d / t
      mlp      5e sb f / t: fc1 output (gate|up), silu(gate), up + 0 (Megatron's glu offset), their product

    selective recomputes the core attention (its inputs q, k, v stay saved, its internals go);
    full keeps only the layer input (e sbh, /t with sequence parallelism).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl {impl!r}: expected one of {IMPLS}")
    s, b, e, d = seq, micro_batch, dtype_bytes, shape.head_dim
    sb = s * b
    a, g, f = shape.heads // tp, shape.groups // tp, shape.ffn // tp
    rep = tp if sp else 1  # sequence parallelism shards the replicated parts (norms, layer input)
    if recompute == "full":
        return {"layer_input": e * sb * shape.hidden // rep}
    terms = {"norms": 2 * norm_bytes(sb, shape.hidden, e, impl) // rep}
    if impl == "local" and recompute == "none":
        terms["qkv"] = 3 * e * sb * a * d
        terms["scores"] = (4 + (e if e != 4 else 0)) * b * a * s * s + s * s
    else:
        terms["qkv"] = e * sb * d * (a + g + (a + 2 * g))
        terms["scores"] = 4 * b * a * s if (impl == "te" and recompute == "none") else 0
    terms["rope"] = 4 * e * s * d
    terms["proj_in"] = e * sb * a * d
    terms["mlp"] = 5 * e * sb * f
    return terms


def logits_bytes(tokens: int, vocab_local: int, dtype_bytes: int, *, fused: bool) -> tuple[int, int]:
    """(saved for backward, peak) of the logprob path for `tokens` rows of [*, vocab/TP] logits.
    fused: the kernel saves the logits (e B/element) and writes their gradient (e) in one pass.
    unfused (kernels.reference): fp32 x - max and exp(x - max) are saved (8 B); the forward peak
    holds the logits, x, x - max, exp and their product (e + 16 B)."""
    n = tokens * vocab_local
    if fused:
        return dtype_bytes * n, 2 * dtype_bytes * n
    return 8 * n, (dtype_bytes + 16) * n


def layers_in_flight(layers: int, pp: int, stage: int, micro_batches: int, vpp: Optional[int]) -> int:
    """Layer x micro-batch activations stage `stage` keeps at its peak under Megatron's schedules:
    1F1B keeps min(pp - stage, M) micro-batches of its layers; the interleaved schedule keeps its
    warm-up chunks + 1 ((pp - stage - 1) * 2 + (vpp - 1) * pp + 1, at most M * vpp) of
    layers / (pp * vpp) each, i.e. L (1 + (pp - 1)/(pp vpp)) on stage 0 (Korthikanti et al. Sec. 4.2.3)."""
    if not vpp or vpp == 1:
        return min(pp - stage, micro_batches) * (layers // pp)
    chunks = min((pp - stage - 1) * 2 + (vpp - 1) * pp + 1, micro_batches * vpp)
    return chunks * (layers // (pp * vpp))


# --- per-GPU result ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleMemory:
    role: str
    params: int
    weights: int
    grads: int = 0
    optimizer: int = 0
    activations: int = 0  # saved for backward by the layers at the stage's peak (all micro-batches in flight)
    recompute: int = 0  # transient: one layer's activations rebuilt during backward (selective / full)
    logits: int = 0  # peak of one micro-batch's logprob path (last stage, actor)
    logits_saved: int = 0  # the part of `logits` autograd keeps until backward
    per_layer: dict = field(default_factory=dict)  # one layer, one micro-batch: term -> bytes
    layers_in_flight: int = 0

    @property
    def static(self) -> int:
        return self.weights + self.grads + self.optimizer

    @property
    def working(self) -> int:
        return self.activations + self.recompute + self.logits


@dataclass(frozen=True)
class EngineMemory:
    kind: str  # sglang / embedded
    tp: int
    weights: int
    total: int  # weights + KV cache, held while generating
    kv_bytes_per_token: int
    released: bool  # given back during training (memory saver / embedded weights to host)

    @property
    def kv_cache(self) -> int:
        return max(self.total - self.weights, 0)

    @property
    def kv_tokens(self) -> int:
        return self.kv_cache // self.kv_bytes_per_token if self.kv_bytes_per_token else 0


@dataclass(frozen=True)
class Phase:
    name: str
    parts: dict  # label -> bytes

    @property
    def total(self) -> int:
        return sum(self.parts.values())


@dataclass(frozen=True)
class GpuPlan:
    node: int
    gpu: int
    rank: Optional[int]  # None: an engine-only GPU (disaggregated pool)
    stage: Optional[int]
    roles: tuple[RoleMemory, ...]
    engine: Optional[EngineMemory]
    phases: tuple[Phase, ...]

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda p: p.total)

    @property
    def where(self) -> str:
        if self.rank is None:
            return f"an SGLang pool GPU (node {self.node} GPU {self.gpu})" if self.node >= 0 else "an SGLang pool GPU"
        return f"node {self.node} GPU {self.gpu} (rank {self.rank})"


@dataclass(frozen=True)
class Server:
    index: int
    url: Optional[str]
    gpus: tuple  # ((node, gpu), ...) inside this cluster; () on hosts outside it


@dataclass(frozen=True)
class Plan:
    world: int
    gpus_per_node: int
    layout: RankLayout
    seq_len: int
    micro_batches: dict  # role -> micro-batches per mini-batch per DP rank
    gpu_bytes: int
    busiest: GpuPlan  # the trainer GPU with the highest peak
    gpus: tuple[GpuPlan, ...]  # one per kind of trainer GPU (pipeline stage, engine on it, sender)
    pool: Optional[GpuPlan]  # a GPU of the disaggregated SGLang pool
    servers: tuple[Server, ...]
    engine_desc: str
    weight_sync: str
    senders: tuple[int, ...]
    problems: tuple[str, ...]  # layout problems found here (not memory)
    impl: str

    @property
    def nnodes(self) -> int:
        return -(-self.world // self.gpus_per_node)

    @property
    def all_gpus(self) -> tuple[GpuPlan, ...]:
        return self.gpus + ((self.pool,) if self.pool is not None else ())

    def fits(self) -> bool:
        return not self.problems and all(g.peak.total <= self.gpu_bytes for g in self.all_gpus) and \
            not self.kv_problem()

    def kv_problem(self) -> Optional[GpuPlan]:
        """A GPU whose SGLang KV cache cannot hold one full sequence."""
        for g in self.all_gpus:
            e = g.engine
            if e is not None and e.kind == "sglang" and e.kv_tokens < self.seq_len:
                return g
        return None


# --- building the plan -------------------------------------------------------------------------


def _servers(cfg: RunConfig, world: int, gpn: int) -> tuple[list[Server], list[str], str]:
    """Where the rollout engines run, problems with that placement, and a one-line description."""
    r, s = cfg.rollout, cfg.rollout.sglang
    if r.engine == "embedded":
        return [Server(0, None, ((0, 0),))], [], "embedded engine in rank 0's process (node 0 GPU 0)"
    attached = bool(s.urls)
    n, tp = (len(s.urls) if attached else s.num_servers), s.tp_size
    how = "attached (rollout.sglang.urls)" if attached else "launched by rank 0 on node 0"
    desc = (f"SGLang: {n} server{'s' if n > 1 else ''} x TP {tp}, {r.placement}, {how}, "
            f"mem_fraction {s.mem_fraction:g}, memory saver {'on' if s.enable_memory_saver else 'off'}")
    servers, problems = [], []
    local_trainer = min(gpn, world)
    for i in range(n):
        url = s.urls[i] if attached else None
        first = s.base_gpu_id + i * tp
        if r.placement == "colocated":
            gpus = tuple(((first + j) // gpn, (first + j) % gpn) for j in range(tp))
        elif attached:
            gpus = ()  # the pool's own hosts
        else:
            gpus = tuple((0, first + j) for j in range(tp))
        servers.append(Server(i, url, gpus))
    last = s.base_gpu_id + n * tp  # one past the last GPU index
    if r.placement == "colocated" and not attached and last > gpn:
        problems.append(f"launched SGLang servers start on rank 0's node only, and rollout.sglang.base_gpu_id "
                        f"{s.base_gpu_id} + num_servers {n} x tp_size {tp} = {last} GPUs exceed "
                        f"cluster.gpus_per_node {gpn}: use fewer or smaller servers, or start servers on the other "
                        "nodes and attach them with rollout.sglang.urls")
    elif r.placement == "colocated" and last > world:
        problems.append(f"rollout.sglang: {n} servers x tp_size {tp} from base_gpu_id {s.base_gpu_id} need GPU "
                        f"index {last - 1}, but the cluster has {world}: use fewer or smaller servers")
    elif r.placement == "disaggregated" and not attached and s.base_gpu_id < local_trainer:
        problems.append(f"rollout.placement disaggregated: launched servers on node 0 GPUs {s.base_gpu_id}-"
                        f"{last - 1} overlap the trainer's GPUs 0-{local_trainer - 1}: set rollout.sglang."
                        f"base_gpu_id={local_trainer} (node 0 then needs {local_trainer + n * tp} GPUs)")
    return servers, problems, desc


def _transport_problem(cfg: RunConfig, gpn: int, servers: list[Server], senders: list[int],
                       transport: str) -> Optional[str]:
    """Colocated SGLang: can each pipeline stage's sending rank reach every server?"""
    if cfg.rollout.engine != "sglang" or cfg.rollout.placement != "colocated":
        return None
    where = {r: (r // gpn, r % gpn) for r in senders}
    server_gpus = {g for srv in servers for g in srv.gpus}
    if transport == "tensor":
        nodes = {n for n, _ in where.values()} | {n for n, _ in server_gpus}
        if len(nodes) > 1:
            return (f"rollout.weight_sync tensor hands CUDA-IPC handles to servers on the sender's node, but the "
                    f"senders (ranks {', '.join(map(str, senders))}: each pipeline stage's first rank) and the "
                    f"servers span nodes {', '.join(map(str, sorted(nodes)))}: use rollout.weight_sync=disk (a path "
                    "every server reads), or keep the trainer's stages and the servers on one node")
    if transport == "nccl":
        clash = [r for r, g in where.items() if g in server_gpus]
        if clash:
            n, gpu = where[clash[0]]
            return (f"rollout.weight_sync nccl: sender rank {clash[0]} and an SGLang server share node {n} GPU {gpu}, "
                    "and NCCL refuses two ranks of one group on one GPU: use rollout.weight_sync=tensor or disk")
    return None


def _role_memory(role: str, cfg: RunConfig, shape: ModelShape, layout: RankLayout, stage: int, micro_batches: int,
                 seq: int, impl: str) -> RoleMemory:
    p, e = cfg.parallel, DTYPE_BYTES[cfg.model.dtype]
    tp, pp = p.tensor, p.pipeline
    value_head = role in ("critic", "reward")
    params = shape.stage_params(tp, pp, stage, value_head=value_head)
    if role not in _trained(cfg):  # frozen: weights only, forward passes without saved activations
        return RoleMemory(role, params, params * e)
    # (optimizer, micro-batch rows, recompute): the critic and the reward model have no recompute key
    optim, mbs, recompute = {"actor": (cfg.actor.optim, cfg.actor.micro_batch_size, cfg.actor.recompute),
                             "critic": (cfg.critic.optim, cfg.critic.micro_batch_size, "none"),
                             "reward": (cfg.rm.optim, 2 * cfg.rm.micro_batch_size, "none")}[role]
    shards = p.context * layout.dp if optim.use_distributed_optimizer else 1
    state_bytes = 12 if e < 4 else 8  # fp32 master copy + m + v; fp32 weights are their own master
    s = seq // p.context
    kw = dict(seq=s, micro_batch=mbs, tp=tp, sp=p.sequence_parallel, dtype_bytes=e, impl=impl)
    per_layer = layer_activation_terms(shape, recompute=recompute, **kw)
    in_flight = layers_in_flight(shape.layers, pp, stage, micro_batches, p.virtual_pipeline)
    mb_in_flight = -(-in_flight // max(shape.layers // pp, 1))  # micro-batches (of this stage's layers)
    acts = in_flight * sum(per_layer.values())
    rep = tp if p.sequence_parallel else 1
    if stage == 0:
        acts += mb_in_flight * 8 * s * mbs  # token ids kept by the embedding lookup
    if recompute == "full":
        acts += 4 * s * shape.head_dim  # the rotary table handed to every checkpointed layer, fp32
    logits = logits_saved = 0
    if stage == pp - 1:
        acts += norm_bytes(s * mbs, shape.hidden, e, impl) // rep  # final norm (its output feeds the head)
        if role == "actor":
            fused = cfg.model.kernels != "reference"
            rows = s * mbs if fused else (s - 1) * mbs  # the unfused path copies logits[:, :-1]
            logits_saved, logits = logits_bytes(rows, shape.padded_vocab(tp) // tp, e, fused=fused)
    transient = 0
    if recompute != "none":
        transient = sum(layer_activation_terms(shape, recompute="none", **kw).values()) - sum(per_layer.values())
    return RoleMemory(role, params, params * e, grads=4 * params, optimizer=-(-state_bytes * params // shards),
                      activations=acts, recompute=transient, logits=logits, logits_saved=logits_saved,
                      per_layer=per_layer, layers_in_flight=in_flight)


def _trained(cfg: RunConfig) -> tuple[str, ...]:
    """Roles with gradients and an optimizer: rm.iterative retrains the reward model inside the run."""
    return ("actor", "critic") + (("reward",) if cfg.rm.iterative.enabled else ())


def _roles(cfg: RunConfig) -> list[str]:
    """The Megatron models the trainer builds on every rank (trainer/rl.py)."""
    roles = ["actor"]
    if cfg.reference.enabled and cfg.algorithm.kl.placement != "none":
        roles.append("reference")
    if cfg.critic.enabled:
        roles.append("critic")
    if any(src.type == "reward_model" for src in cfg.reward.sources):
        roles.append("reward")  # assumed the policy's shape (trainer/reward_model/scorer.py builds it per rank)
    if cfg.distill.enabled:
        roles.append("teacher")  # assumed the policy's shape; a larger teacher needs more than planned
    return roles


def _engine_memory(cfg: RunConfig, shape: ModelShape, trainer_static: int, gpu_bytes: int, seq: int) -> EngineMemory:
    """What one engine holds on one of its GPUs. SGLang sizes its static pool (weights + KV cache) as
    mem_fraction x the memory free when it starts (0.5.x `_profile_available_bytes`: free - pre-load
    free x (1 - mem_fraction)); launched colocated servers start after the trainer built its models."""
    r, s, e = cfg.rollout, cfg.rollout.sglang, DTYPE_BYTES[cfg.model.dtype]
    if r.engine == "embedded":  # transformers on rank 0: whole model, KV cache of one generate batch
        rows = min(EMBEDDED_MAX_BATCH, cfg.algorithm.prompts_per_step * r.n_samples_per_prompt)
        kv_tok = shape.kv_bytes_per_token(1, e)
        weights = shape.total_params() * e
        return EngineMemory("embedded", 1, weights, weights + rows * seq * kv_tok, kv_tok, released=True)
    weights = shape.total_params() * e // s.tp_size
    engine_reserve = int(ENGINE_RESERVE_GIB * GiB)
    if r.placement == "colocated" and not s.urls:
        free = gpu_bytes - trainer_static - int(TRAINER_RESERVE_GIB * GiB) - engine_reserve
    else:  # its own GPU, or attached servers that were started before the trainer
        free = gpu_bytes - engine_reserve
    return EngineMemory("sglang", s.tp_size, weights, int(s.mem_fraction * max(free, 0)),
                        shape.kv_bytes_per_token(s.tp_size, e), released=s.enable_memory_saver)


def _phases(roles: list[RoleMemory], engine: Optional[EngineMemory], sync_buffers: int, is_sender: bool) -> list[Phase]:
    """What is resident on one trainer GPU in each phase of a step; the engine, when colocated here,
    holds its pool while generating and (memory saver) only its weights during the sync."""
    static = {f"{m.role} static": m.static for m in roles}
    reserve = {"reserve": int((TRAINER_RESERVE_GIB + (ENGINE_RESERVE_GIB if engine is not None else 0)) * GiB)}
    idle_engine = {} if engine is None or engine.released else {"engine": engine.total}
    phases = []
    if engine is not None:
        phases.append(Phase("rollout", {**static, "engine": engine.total, **reserve}))
    if is_sender or engine is not None:
        resumed = {} if engine is None else {"engine weights": engine.weights if engine.released else engine.total}
        phases.append(Phase("weight sync", {**static, **resumed, "sync buffers": sync_buffers if is_sender else 0,
                                            **reserve}))
    for m in roles:
        if m.grads:  # a trained role
            work = {"activations": m.activations, "recompute": m.recompute, "logits": m.logits}
            phases.append(Phase(f"{m.role} update", {**static, **{k: v for k, v in work.items() if v},
                                                     **idle_engine, **reserve}))
    return phases


def plan(cfg: RunConfig, world_size: Optional[int] = None, *, impl: str = "te") -> Plan:
    """The layout and per-GPU memory of `cfg` on `world_size` ranks (default cluster.nnodes *
    gpus_per_node). `impl`: te (GPUs with TransformerEngine) or local (Megatron's local spec, CPU)."""
    world = world_size_of(cfg, world_size)
    p, gpn = cfg.parallel, cfg.cluster.gpus_per_node
    layout = RankLayout(world, tp=p.tensor, pp=p.pipeline, cp=p.context)
    shape = ModelShape.from_config(cfg.model)
    seq = cfg.data.max_prompt_len + cfg.rollout.sampling.max_new_tokens
    dp = data_parallel_size(cfg, world)
    seqs_per_rank = cfg.algorithm.mini_batch_prompts * cfg.rollout.n_samples_per_prompt // dp
    micro = {"actor": max(seqs_per_rank // cfg.actor.micro_batch_size, 1)}
    if cfg.critic.enabled:
        micro["critic"] = max(seqs_per_rank // cfg.critic.micro_batch_size, 1)
    if cfg.rm.iterative.enabled:  # rm.batch_size pairs per optimizer step
        micro["reward"] = max(cfg.rm.batch_size // dp // cfg.rm.micro_batch_size, 1)
    gpu_bytes = int(cfg.cluster.gpu_memory_gb * GiB)
    servers, problems, desc = _servers(cfg, world, gpn)
    transport = resolve_weight_sync(cfg.rollout)
    senders = [layout.rank(pp=s) for s in range(p.pipeline)]  # tp = cp = dp = 0 of each stage sends its layers
    if transport == "in_process":
        senders = [0]
    problem = _transport_problem(cfg, gpn, servers, senders, transport)
    if problem:
        problems.append(problem)
    e = DTYPE_BYTES[cfg.model.dtype]
    sync_buffers = 2 * max(cfg.rollout.bucket_mb * MiB, shape.largest_tensor() * e)  # two buckets in flight

    engine_on = {g: srv for srv in servers for g in srv.gpus} if cfg.rollout.placement == "colocated" else {}
    kinds: dict[tuple, GpuPlan] = {}
    for rank in range(world):
        stage = layout.coords(rank)["pp"]
        where = (rank // gpn, rank % gpn)
        key = (stage, where in engine_on, rank in senders)
        if key in kinds:
            continue
        roles = [_role_memory(role, cfg, shape, layout, stage, micro.get(role, micro["actor"]), seq, impl)
                 for role in _roles(cfg)]
        static = sum(m.static for m in roles)
        engine = _engine_memory(cfg, shape, static, gpu_bytes, seq) if where in engine_on else None
        phases = _phases(roles, engine, sync_buffers, rank in senders)
        kinds[key] = GpuPlan(where[0], where[1], rank, stage, tuple(roles), engine, tuple(phases))
    gpus = tuple(kinds.values())
    pool = None
    if cfg.rollout.engine == "sglang" and cfg.rollout.placement == "disaggregated":
        engine = _engine_memory(cfg, shape, 0, gpu_bytes, seq)
        node, gpu = servers[0].gpus[0] if servers and servers[0].gpus else (-1, -1)
        pool = GpuPlan(node, gpu, None, None, (), engine,
                       (Phase("rollout", {"engine": engine.total, "reserve": int(ENGINE_RESERVE_GIB * GiB)}),))
    busiest = max(gpus, key=lambda g: (g.peak.total, -g.rank))
    return Plan(world, gpn, layout, seq, micro, gpu_bytes, busiest, gpus, pool, tuple(servers), desc, transport,
                tuple(senders), tuple(problems), impl)


# --- the verdict -------------------------------------------------------------------------------


def _candidates(cfg: RunConfig, gpu: GpuPlan, phase: Phase, need: int, budget: int) -> list[tuple[str, Callable]]:
    """Single knobs that lower `phase` on `gpu`, most specific first: (override text, apply(cfg))."""
    out = []
    m, p, s = cfg.model, cfg.parallel, cfg.rollout.sglang

    def setter(path: str, value):
        def apply(c: RunConfig):
            *parents, leaf = path.split(".")
            obj = c
            for part in parents:
                obj = getattr(obj, part)
            setattr(obj, leaf, value)
        return f"{path}={str(value).lower() if isinstance(value, bool) else value}", apply

    if phase.name == "rollout" and cfg.rollout.engine == "sglang" and gpu.rank is not None and s.urls:
        # attached colocated servers keep mem_fraction x (GPU - reserve) from before the trainer started
        room = budget - (need - phase.parts["engine"])
        frac = math.floor(100 * room / (budget - ENGINE_RESERVE_GIB * GiB)) / 100
        if frac > 0:
            out.append(setter("rollout.sglang.mem_fraction", frac))
    if phase.name.endswith("update") or phase.name == "weight sync":
        if m.kernels == "reference":
            out.append(setter("model.kernels", "auto"))
        for role in ("actor", "critic"):
            optim = getattr(cfg, role).optim
            if (role == "actor" or cfg.critic.enabled) and not optim.use_distributed_optimizer:
                out.append(setter(f"{role}.optim.use_distributed_optimizer", True))
        if phase.name == "actor update":
            if cfg.actor.recompute != "full":
                out.append(setter("actor.recompute", "full"))
            if cfg.actor.micro_batch_size > 1:
                out.append(setter("actor.micro_batch_size", 1))
        if phase.name == "critic update" and cfg.critic.micro_batch_size > 1:
            out.append(setter("critic.micro_batch_size", 1))
        if phase.name == "reward update" and cfg.rm.micro_batch_size > 1:
            out.append(setter("rm.micro_batch_size", 1))
        if p.sequence_parallel is False and p.tensor > 1:
            out.append(setter("parallel.sequence_parallel", True))
    out.append(setter("parallel.tensor", p.tensor * 2))
    out.append(setter("parallel.pipeline", p.pipeline * 2))
    return out


def _try(cfg: RunConfig, world: int, appliers: list[Callable], impl: str) -> Optional[Plan]:
    """The plan of cfg with the knobs applied, or None when that config is invalid."""
    try:
        c = cfg.model_copy(deep=True)
        for apply in appliers:
            apply(c)
        if run_errors(c, world):
            return None
        if c.parallel.tensor > c.cluster.gpus_per_node:  # TP stays inside a node's NVLink domain
            return None
        return plan(c, world, impl=impl)
    except Exception:  # a knob the schema or the layout refuses
        return None


def refusal(cfg: RunConfig, result: Plan, world_size: Optional[int] = None) -> Optional[str]:
    """None when the plan fits; else one line: what overflows where, by how much, and the knob to turn."""
    if result.problems:
        return result.problems[0]
    kv_gpu = result.kv_problem()
    overflow = [g for g in result.all_gpus if g.peak.total > result.gpu_bytes]
    world = world_size_of(cfg, world_size)
    budget = result.gpu_bytes
    if overflow:
        gpu = max(overflow, key=lambda g: g.peak.total)
        phase = gpu.peak
        need = phase.total
        head = (f"{phase.name} needs {gib(need):.1f} GiB on {gpu.where}, {gib(need - budget):.1f} GiB over "
                f"cluster.gpu_memory_gb {cfg.cluster.gpu_memory_gb:g}")
        if gpu.rank is None:
            return head + ": lower rollout.sglang.mem_fraction"
        knobs = _candidates(cfg, gpu, phase, need, budget)
        for text, apply in knobs:
            fixed = _try(cfg, world, [apply], result.impl)
            if fixed is not None and fixed.fits():
                return f"{head}: set {text} (then {gib(fixed.busiest.peak.total):.1f} GiB)"
        static = sum(m.static for m in gpu.roles)
        if static + TRAINER_RESERVE_GIB * GiB > budget:
            return (f"{head}: the weights, gradients and optimizer states alone need {gib(static):.1f} GiB: shard "
                    "them over more GPUs (cluster.nnodes / gpus_per_node with a larger parallel.tensor or "
                    "parallel.pipeline)")
        return (f"{head}: no single knob fits it; combine {', '.join(t for t, _ in knobs[:3])}, shorten "
                "data.max_prompt_len + rollout.sampling.max_new_tokens, or add GPUs")
    if kv_gpu is not None:
        eng = kv_gpu.engine
        return (f"the SGLang KV cache on {kv_gpu.where} holds {eng.kv_tokens} tokens ({gib(eng.kv_cache):.2f} GiB), "
                f"less than one sequence of {result.seq_len} (data.max_prompt_len + rollout.sampling.max_new_tokens):"
                f" raise rollout.sglang.mem_fraction or rollout.sglang.tp_size, or free trainer memory")
    return None


# --- printing ----------------------------------------------------------------------------------


def _ranks_text(group: list[int]) -> str:
    if len(group) > 2 and group == list(range(group[0], group[-1] + 1)):
        return f"[{group[0]}-{group[-1]}]"
    if len(group) > 8:
        return f"[{', '.join(map(str, group[:3]))}, ..., {group[-1]}] ({len(group)})"
    return "[" + ", ".join(map(str, group)) + "]"


def _groups_line(label: str, groups: list[list[int]], head: int = 4, tail: int = 2) -> str:
    """`label (count): [..] [..] ...`, the first `head` and last `tail` groups when there are many."""
    shown = [_ranks_text(g) for g in groups]
    if len(shown) > head + tail + 1:
        shown = shown[:head] + [f"... ({len(groups) - head - tail} more)"] + shown[-tail:]
    return f"  {label} ({len(groups)}): {' '.join(shown)}"


def _gpus_text(gpus: tuple) -> str:
    nodes = sorted({n for n, _ in gpus})
    parts = []
    for n in nodes:
        ids = [g for m, g in gpus if m == n]
        parts.append(f"node {n} GPU{'s' if len(ids) > 1 else ''} " + (f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else
                                                                        str(ids[0])))
    return ", ".join(parts)


def format_plan(cfg: RunConfig, result: Plan) -> str:
    """The layout, the memory table of the busiest GPU, the phases; the verdict is `refusal`."""
    L, P, gpn = result.layout, cfg.parallel, result.gpus_per_node
    g = lambda n: f"{gib(n):.2f}"  # noqa: E731
    shape = ModelShape.from_config(cfg.model)
    out = [f"plan: {shape.total_params() / 1e9:.2f}B-parameter {cfg.model.architecture} model, "
           f"{cfg.algorithm.advantage} ({', '.join(_roles(cfg))}), sequence {result.seq_len} "
           f"(data.max_prompt_len {cfg.data.max_prompt_len} + max_new_tokens {cfg.rollout.sampling.max_new_tokens})",
           "", f"layout: world {result.world} = TP {P.tensor} x CP {P.context} x PP {P.pipeline} x DP {L.dp} "
               f"(VPP {P.virtual_pipeline or '-'}, order tp-cp-dp-pp), {result.nnodes} "
               f"node{'s' if result.nnodes > 1 else ''} x {gpn} GPUs (rank r on node r // {gpn}, GPU r % {gpn})"]
    nodes = [list(range(n * gpn, min((n + 1) * gpn, result.world))) for n in range(result.nnodes)]
    out.append(_groups_line("nodes", nodes))
    for dim, name in (("tp", "TP"), ("cp", "CP"), ("pp", "PP"), ("dp", "DP")):
        if dim != "cp" or P.context > 1:
            out.append(_groups_line(f"{name} groups", L.groups(dim)))
    stage_ranks = [[r for r in range(result.world) if L.coords(r)["pp"] == s] for s in range(P.pipeline)]
    out.append(_groups_line("pipeline stages", stage_ranks, head=2, tail=1) +
               f"; {shape.layers // P.pipeline} layers each")
    out.append(f"  rollout: {result.engine_desc}")
    for srv in result.servers[:6]:
        where = _gpus_text(srv.gpus) if srv.gpus else f"its own {cfg.rollout.sglang.tp_size} GPU(s) on " \
            f"{urlparse(srv.url).hostname if srv.url else '?'} (outside this world)"
        shared = ""
        if srv.gpus and cfg.rollout.placement == "colocated":
            ranks = [n * gpn + gpu for n, gpu in srv.gpus if n * gpn + gpu < result.world]
            shared = f", shared with ranks {_ranks_text(ranks)}"
        out.append(f"    server {srv.index}{' ' + srv.url if srv.url else ''}: {where}{shared}")
    if len(result.servers) > 6:
        out.append(f"    ... {len(result.servers) - 6} more servers")
    out.append(f"  weight sync: {result.weight_sync}, sent by rank{'s' if len(result.senders) > 1 else ''} "
               f"{', '.join(map(str, result.senders))} (each pipeline stage's first rank)")

    b = result.busiest
    attn = "TransformerEngine: fused RMSNorm, flash attention" if result.impl == "te" else \
        "Megatron local spec: torch RMSNorm, unfused attention"
    out += ["", f"memory of the busiest trainer GPU: {b.where}, pipeline stage {b.stage}; GiB; layer spec: {attn}"]
    if b.roles:
        out.append(f"  {'role':<10} {'params':>9} {'weights':>8} {'grads':>8} {'optimizer':>9} {'activations':>11} "
                   f"{'recompute':>9} {'logits':>7}")
        for m in b.roles:
            dash = lambda v: g(v) if v else "-"  # noqa: E731
            out.append(f"  {m.role:<10} {m.params / 1e9:>8.3f}B {g(m.weights):>8} {dash(m.grads):>8} "
                       f"{dash(m.optimizer):>9} {dash(m.activations):>11} {dash(m.recompute):>9} {dash(m.logits):>7}")
        actor = b.roles[0]
        e = DTYPE_BYTES[cfg.model.dtype]
        s = result.seq_len // P.context
        mbs = cfg.actor.micro_batch_size
        terms = ", ".join(f"{k} {v / MiB:.1f}" for k, v in actor.per_layer.items())
        out.append(f"  actor activations: {actor.layers_in_flight} layer x micro-batch in flight x "
                   f"{sum(actor.per_layer.values()) / MiB:.1f} MiB per layer (recompute {cfg.actor.recompute}, "
                   f"b {mbs}, s {s}: {terms} MiB)")
        fused_saved, fused_peak = logits_bytes(s * mbs, shape.padded_vocab(P.tensor) // P.tensor, e, fused=True)
        _, unfused_peak = logits_bytes((s - 1) * mbs, shape.padded_vocab(P.tensor) // P.tensor, e, fused=False)
        out.append(f"  logits per micro-batch [{s * mbs} x {shape.padded_vocab(P.tensor) // P.tensor}] on the last "
                   f"stage: fused kernel {g(fused_peak)} ({2 * e} B/element), unfused reference {g(unfused_peak)} "
                   f"({e + 16} B/element: fp32 copies); model.kernels {cfg.model.kernels} -> "
                   f"{'unfused' if cfg.model.kernels == 'reference' else 'fused'}")
    def engine_line(eng: EngineMemory) -> str:
        when = "released during training (memory saver)" if eng.released else "resident during training"
        if eng.kind == "embedded":
            when = "weights to host memory during training"
        return (f"  engine ({eng.kind}, TP {eng.tp}): weights {g(eng.weights)} + KV cache {g(eng.kv_cache)} = "
                f"{g(eng.total)} ({eng.kv_tokens} tokens = {eng.kv_tokens // max(result.seq_len, 1)} full "
                f"sequences); {when}")

    def peak_line(gpu: GpuPlan) -> str:
        free = result.gpu_bytes - gpu.peak.total
        return (f"  peak: {gpu.peak.name}, {g(gpu.peak.total)} of {cfg.cluster.gpu_memory_gb:g} GiB "
                f"({'%.2f free' % gib(free) if free >= 0 else '%.2f over' % gib(-free)})")

    if b.engine is not None:
        out.append(engine_line(b.engine))
        if b.engine.kind == "sglang" and b.engine.released:
            out.append("  (counted as returned: the activation memory the trainer's caching allocator keeps after an "
                       "update must go back to the driver, torch.cuda.empty_cache(), before the engine resumes)")
    out.append(f"  phases (reserve: {TRAINER_RESERVE_GIB:g} GiB per trainer process, {ENGINE_RESERVE_GIB:g} per "
               "engine: CUDA context, NCCL, fragmentation):")
    for ph in b.phases:
        parts = " + ".join(f"{k} {g(v)}" for k, v in ph.parts.items() if v)
        out.append(f"    {ph.name:<14} {g(ph.total):>7}  = {parts}")
    out.append(peak_line(b))
    seen = {(b.stage, b.engine is not None)}
    for other in result.gpus:  # the other kinds of trainer GPU, one line per stage / engine presence
        key = (other.stage, other.engine is not None)
        if key not in seen:
            seen.add(key)
            out.append(f"  other trainer GPUs, e.g. {other.where}, stage {other.stage}: peak {other.peak.name} "
                       f"{g(other.peak.total)}")
    if result.pool is not None:
        out += ["", "memory of an SGLang pool GPU (disaggregated; mem_fraction x (GPU - reserve)); GiB",
                engine_line(result.pool.engine), peak_line(result.pool)]
    return "\n".join(out)
