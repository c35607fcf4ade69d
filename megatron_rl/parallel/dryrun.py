"""Dry run of a full-size parallel layout in one CPU process: no GPUs, no weights, no communication.

    report = dry_run(cfg, world_size=32, ranks="auto")   # raises LayoutMismatch on the first problem
    print(format_report(report))

For each examined rank of the world this process joins torch's fake process group (`backend="fake"`:
every collective is a no-op, `new_group` works for any ranks), runs Megatron's
`initialize_model_parallel` with the config's TP/PP/CP/VPP, and checks the TP, CP, DP, PP and
embedding groups Megatron built against `config.layout.RankLayout`. On the ranks chosen for building
it builds the actor (and the critic when enabled) with `models.builder.build_model` on the meta
device, so a 32B model costs no memory, and records every parameter's local shape. Per rank, every
parameter must equal the shard the HF loader would cut for it (`hf_mapping.shard_from_hf` over
meta tensors of the HF shapes). Across ranks, the TP shards of every parameter are merged with the
exporter's `hf_from_shards`: each HF tensor must come out with its HF shape exactly once, every layer
must sit on exactly one pipeline stage / virtual chunk, and the parameters must add up to the
analytic count of the model.

One process loops over the ranks, destroying and rebuilding Megatron's parallel state each time:
building a rank's chunks on meta takes milliseconds, while a process per rank would pay the ~4 s
import of torch + megatron-core each, and a fake process group carries no data between processes
anyway, so the cross-rank checks need the shapes in one place.
"""
from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch.overrides import TorchFunctionMode

from ..config.errors import ConfigError
from ..config.layout import RankLayout
from ..config.schema import ModelConfig, ParallelConfig, RunConfig

GROUP_DIMS = ("tp", "cp", "dp", "pp")
AUTO_ALL_GROUPS = 256  # --ranks auto checks every rank's groups up to this world size (~16 s at 256)


class LayoutMismatch(ConfigError):
    """The layout Megatron builds differs from what the config / HF mapping expects."""


@dataclass(frozen=True)
class LocalParam:
    chunk: int  # virtual pipeline chunk on this rank (0 without VPP)
    name: str  # Megatron name inside the chunk
    shape: tuple[int, ...]
    nbytes: int


@dataclass
class RankResult:
    rank: int
    coords: dict[str, int]
    groups: dict[str, list[int]]  # Megatron's, by dim ("tp", "cp", "dp", "pp", "embedding")
    params: dict[str, list[LocalParam]] = field(default_factory=dict)  # role -> params (built ranks only)
    layers: dict[str, list[list[int]]] = field(default_factory=dict)  # role -> global layers per chunk


@dataclass
class RoleSummary:
    hf_shapes: dict[str, tuple[int, ...]]  # every HF tensor, reassembled over TP and PP
    total_params: int  # = the analytic count (checked)


@dataclass
class DryRunReport:
    layout: RankLayout
    virtual_pipeline: Optional[int]
    roles: list[str]
    results: list[RankResult]  # every examined rank, in rank order
    built: list[int]  # ranks whose models were built
    summaries: dict[str, RoleSummary]  # per role; empty when `built` misses a TP x PP coordinate
    layer_spec: str
    seconds: float
    peak_rss_mib: float
    dtype: str


# --- which ranks ---------------------------------------------------------------------------------


def select_ranks(spec: str, layout: RankLayout) -> tuple[list[int], list[int]]:
    """(ranks whose groups are checked, ranks whose models are built) for --ranks SPEC.

    auto: models on the data-parallel-0 / context-parallel-0 ranks, which hold every TP x PP
    coordinate once (the other ranks are replicas with the same shapes by construction); groups on
    every rank up to AUTO_ALL_GROUPS ranks, beyond that on the built ranks plus the DP and CP groups
    of the first and last rank (every rank's init builds every group: the cost grows as world^2).
    all: both on every rank. "0,5,31": both on those ranks.
    """
    world = layout.world_size
    spec = spec.strip()
    if spec == "all":
        return list(range(world)), list(range(world))
    if spec == "auto":
        cover = [r for r in range(world) if layout.coords(r)["dp"] == 0 and layout.coords(r)["cp"] == 0]
        if world <= AUTO_ALL_GROUPS:
            return list(range(world)), cover
        ends = [layout.group_of(dim, r) for dim in ("dp", "cp") for r in (0, world - 1)]
        return sorted(set(cover).union(*ends)), cover
    try:
        ranks = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--ranks {spec!r}: expected auto, all or a comma-separated list such as 0,5,31") from None
    if not ranks or ranks[0] < 0 or ranks[-1] >= world:
        raise ConfigError(f"--ranks {spec!r}: the world has {world} ranks (0..{world - 1}): pick ranks in that range")
    return ranks, ranks


# --- one rank on the fake backend ---------------------------------------------------------------


@contextlib.contextmanager
def _fake_rank(rank: int, world: int):
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers backend "fake"

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        from megatron.core import parallel_state as ps

        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        dist.destroy_process_group()


def _initialize_megatron(parallel: ParallelConfig) -> None:
    """The same call as topology.init_parallel, minus the gloo side groups: gloo cannot be created
    on a fake store, and they repeat the ranks of the DP groups checked here."""
    from megatron.core import parallel_state as ps

    from .topology import model_parallel_sizes

    ps.initialize_model_parallel(**model_parallel_sizes(parallel), create_gloo_process_groups=False)


def _megatron_groups() -> tuple[dict[str, list[int]], dict[str, int]]:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    ranks = dist.get_process_group_ranks
    groups = {
        "tp": ranks(ps.get_tensor_model_parallel_group()),
        "cp": ranks(ps.get_context_parallel_group()),
        "dp": ranks(ps.get_data_parallel_group(with_context_parallel=False)),
        "pp": ranks(ps.get_pipeline_model_parallel_group()),
    }
    if ps.is_rank_in_embedding_group():
        groups["embedding"] = ranks(ps.get_embedding_group())
    coords = {
        "tp": ps.get_tensor_model_parallel_rank(), "cp": ps.get_context_parallel_rank(),
        "dp": ps.get_data_parallel_rank(with_context_parallel=False), "pp": ps.get_pipeline_model_parallel_rank(),
    }
    return groups, coords


def expected_groups(layout: RankLayout, rank: int) -> dict[str, list[int]]:
    """The layout's groups of `rank`; the embedding group (first and last pipeline stage, which hold
    the word embeddings) only on the ranks that belong to it."""
    out = {dim: layout.group_of(dim, rank) for dim in GROUP_DIMS}
    pp = out["pp"]
    embedding = sorted({pp[0], pp[-1]})
    if rank in embedding:
        out["embedding"] = embedding
    return out


def _fmt(group: list[int]) -> str:
    if len(group) > 4 and group == list(range(group[0], group[-1] + 1)):
        return f"[{group[0]}..{group[-1]}]"
    if len(group) > 6:
        return f"[{group[0]}, {group[1]}, ..., {group[-1]}] ({len(group)} ranks)"
    return "[" + ", ".join(map(str, group)) + "]"


def _check_groups(rank: int, layout: RankLayout, groups: dict, coords: dict) -> None:
    want = expected_groups(layout, rank)
    for dim in (*GROUP_DIMS, "embedding"):
        got, exp = groups.get(dim), want.get(dim)
        if got != exp:
            raise LayoutMismatch(
                f"rank {rank}: Megatron's {dim.upper()} group is {_fmt(got) if got else 'none'} but the layout "
                f"(order tp-cp-dp-pp) gives {_fmt(exp) if exp else 'none'}"
            )
    if coords != layout.coords(rank):
        raise LayoutMismatch(f"rank {rank}: Megatron's coordinates {coords} differ from the layout's "
                             f"{layout.coords(rank)}")


# --- models on meta -----------------------------------------------------------------------------


class _OnMeta(TorchFunctionMode):
    """Every device argument becomes meta and `.cuda()` a no-op: Megatron passes
    `device=torch.cuda.current_device()` explicitly when it initialises on GPU, which a
    `torch.device("meta")` context alone would not override."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name == "cuda":
            return args[0]
        if kwargs.get("device") is not None:
            kwargs["device"] = "meta"
        if name == "to":
            args = tuple(a for i, a in enumerate(args) if i == 0 or not isinstance(a, (str, torch.device, int))
                         or isinstance(a, bool))
        return func(*args, **kwargs)


def build_on_meta(role: str, model: ModelConfig, parallel: ParallelConfig) -> list:
    from ..models.builder import build_model

    with torch.device("meta"), _OnMeta():
        return build_model(role, model, parallel, perform_initialization=False)


def _record(chunks) -> tuple[list[LocalParam], list[list[int]]]:
    from ..models.builder import global_layer_index, unwrap

    params, layers = [], []
    for v, chunk in enumerate(chunks):
        gpt = unwrap(chunk)
        if any(p.device.type != "meta" for p in gpt.parameters()):
            raise LayoutMismatch("a parameter was allocated off the meta device: the dry run would use real memory")
        params += [LocalParam(v, n, tuple(p.shape), p.numel() * p.element_size()) for n, p in gpt.named_parameters()]
        index = global_layer_index(gpt)
        layers.append([index[i] for i in range(len(index))])  # local order: position i is local layer i
    return params, layers


def _value_head(role: str) -> bool:
    return role in ("critic", "reward")


def _hf_names_of(name: str, layers: list[int], model: ModelConfig, role: str) -> tuple[tuple[str, ...], str]:
    from ..models.hf_mapping import map_param

    mapping = map_param(name, dict(enumerate(layers)), value_head=_value_head(role))
    return mapping.hf_names, mapping.kind


def _tied_output(name: str, model: ModelConfig, role: str) -> bool:
    """The last stage's copy of tied word embeddings: loaded from embed_tokens, never exported."""
    return name == "output_layer.weight" and model.tie_word_embeddings and not _value_head(role)


def _check_local_shards(result: RankResult, role: str, model: ModelConfig, tp: int) -> None:
    """Each parameter equals the shard the HF loader cuts for this TP rank."""
    from ..models.builder import padded_vocab_size
    from ..models.hf_mapping import hf_tensor_shape, shape_of, shard_from_hf

    tp_rank, shape = result.coords["tp"], shape_of(model)
    for p in result.params[role]:
        hf_names, kind = _hf_names_of(p.name, result.layers[role][p.chunk], model, role)
        if _tied_output(p.name, model, role):
            hf_names = ("model.embed_tokens.weight",)
        full = [torch.empty(hf_tensor_shape(n, model), device="meta") for n in hf_names]

        def read(i, dim, start, stop, _f=full):
            return _f[i] if dim is None else _f[i].narrow(dim, start, stop - start)

        read.rows = lambda i, _f=full: _f[i].shape[0]
        read.cols = lambda i, _f=full: _f[i].shape[1]
        cut = tuple(shard_from_hf(kind, read, shape, tp, tp_rank,
                                  padded_rows=padded_vocab_size(model.vocab_size, tp)).shape)
        if cut != p.shape:
            raise LayoutMismatch(f"rank {result.rank} {role}: {p.name} is {p.shape} but the HF loader cuts a {cut} "
                                 f"shard of {hf_names[0]} for TP rank {tp_rank}")


# --- across ranks -------------------------------------------------------------------------------


def expected_hf_names(model: ModelConfig, role: str) -> list[str]:
    """Every HF tensor of the role's model, from the config alone."""
    from ..models.hf_mapping import ARCHITECTURES

    per_layer = ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                 "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                 "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
    if model.qkv_bias:
        per_layer += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
    if ARCHITECTURES[model.architecture].qk_norm:
        per_layer += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if _value_head(role):
        names.append("score.weight")
    elif not model.tie_word_embeddings:
        names.append("lm_head.weight")
    names += [f"model.layers.{i}.{n}" for i in range(model.num_layers) for n in per_layer]
    return names


def analytic_param_count(model: ModelConfig, role: str) -> int:
    """Parameters of the unsharded model, by formula."""
    from ..models.hf_mapping import ARCHITECTURES

    h, f, v, d = model.hidden_size, model.ffn_hidden_size, model.vocab_size, model.kv_channels
    q, kv = model.num_attention_heads * d, model.num_query_groups * d
    layer = 2 * h + h * (q + 2 * kv) + q * h + 3 * h * f
    layer += (q + 2 * kv) if model.qkv_bias else 0
    layer += 2 * d if ARCHITECTURES[model.architecture].qk_norm else 0
    head = h if _value_head(role) else (0 if model.tie_word_embeddings else v * h)
    return v * h + h + head + model.num_layers * layer


def _representatives(results: list[RankResult], layout: RankLayout, role: str) -> Optional[dict]:
    """(tp, pp) -> the first built rank with those coordinates; None if a coordinate is missing. The
    other built ranks with the same coordinates (DP / CP replicas) must hold identical shapes."""
    reps: dict[tuple[int, int], RankResult] = {}
    for r in results:
        if role not in r.params:
            continue
        key = (r.coords["tp"], r.coords["pp"])
        if key not in reps:
            reps[key] = r
        elif r.params[role] != reps[key].params[role] or r.layers[role] != reps[key].layers[role]:
            raise LayoutMismatch(f"rank {r.rank} {role}: parameters differ from rank {reps[key].rank}, which has "
                                 f"the same TP and PP coordinates (a data/context-parallel replica)")
    if len(reps) < layout.tp * layout.pp:
        return None
    return reps


def verify_across_ranks(results: list[RankResult], layout: RankLayout, model: ModelConfig, role: str
                        ) -> Optional[RoleSummary]:
    """Reassemble every HF tensor from the TP shards of every PP stage and check it against the model.
    None when the built ranks do not cover every TP x PP coordinate."""
    from ..models.hf_mapping import hf_from_shards, hf_tensor_shape, shape_of

    reps = _representatives(results, layout, role)
    if reps is None:
        return None
    shape = shape_of(model)
    holder: dict[int, str] = {}
    for p in range(layout.pp):
        for v, layers in enumerate(reps[(0, p)].layers[role]):
            for i in layers:
                if i in holder:
                    raise LayoutMismatch(f"{role}: layer {i} is built twice, on {holder[i]} and on PP stage {p} "
                                         f"chunk {v}")
                holder[i] = f"PP stage {p} chunk {v}"
    missing = [i for i in range(model.num_layers) if i not in holder]
    if missing:
        raise LayoutMismatch(f"{role}: layer {missing[0]} is on no pipeline stage ({len(missing)} layers missing)")

    hf_shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, str] = {}
    for p in range(layout.pp):
        ranks = [reps[(t, p)] for t in range(layout.tp)]
        names = [[(q.chunk, q.name) for q in r.params[role]] for r in ranks]
        for t, other in enumerate(names[1:], 1):
            if other != names[0] or ranks[t].layers[role] != ranks[0].layers[role]:
                raise LayoutMismatch(f"{role}: rank {ranks[t].rank} holds different parameters than rank "
                                     f"{ranks[0].rank} of its tensor-parallel group")
        for k, q in enumerate(ranks[0].params[role]):
            if _tied_output(q.name, model, role):
                continue
            hf_names, kind = _hf_names_of(q.name, ranks[0].layers[role][q.chunk], model, role)
            shards = [torch.empty(r.params[role][k].shape, device="meta") for r in ranks]
            if kind == "replicated" and any(s.shape != shards[0].shape for s in shards):
                raise LayoutMismatch(f"{role}: replicated {q.name} has different shapes over TP ranks "
                                     f"{[r.rank for r in ranks]}")
            place = f"PP stage {p} chunk {q.chunk} ({q.name})"
            try:
                merged = hf_from_shards(kind, shards, shape, model.vocab_size if kind == "rows" else None)
            except RuntimeError as exc:  # shards that cannot even be concatenated / regrouped
                raise LayoutMismatch(f"{role}: the TP shards of {place} do not reassemble: "
                                     f"{_first_line(exc)}") from None
            for hf_name, tensor in zip(hf_names, merged):
                if hf_name in hf_shapes:
                    raise LayoutMismatch(f"{role}: {hf_name} comes from two places: {where[hf_name]} and {place}")
                want = hf_tensor_shape(hf_name, model)
                if tuple(tensor.shape) != want:
                    raise LayoutMismatch(f"{role}: {hf_name} reassembles to {tuple(tensor.shape)} from {place}, "
                                         f"but the HF shape is {want}")
                hf_shapes[hf_name], where[hf_name] = tuple(tensor.shape), place
    expected = expected_hf_names(model, role)
    absent = [n for n in expected if n not in hf_shapes]
    if absent:
        raise LayoutMismatch(f"{role}: no rank holds {absent[0]} ({len(absent)} HF tensors missing)")
    known = set(expected)
    extra = [n for n in hf_shapes if n not in known]
    if extra:
        raise LayoutMismatch(f"{role}: {extra[0]} is built but is not a tensor of this model")
    total = sum(math.prod(s) for s in hf_shapes.values())
    analytic = analytic_param_count(model, role)
    if total != analytic:
        raise LayoutMismatch(f"{role}: the reassembled tensors hold {total:,} parameters, the analytic count is "
                             f"{analytic:,}")
    return RoleSummary(hf_shapes, total)


# --- the whole run ------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _examine_rank(rank: int, layout: RankLayout, cfg: RunConfig, roles: list[str], build: bool) -> RankResult:
    """Join the fake world as `rank`, let Megatron build its groups (and models), check them."""
    p = cfg.parallel
    with _fake_rank(rank, layout.world_size):
        try:
            _initialize_megatron(p)
        except Exception as exc:  # Megatron refusing the layout is the answer, in one line
            raise LayoutMismatch(f"rank {rank}: Megatron's initialize_model_parallel failed: "
                                 f"{_first_line(exc)}") from None
        groups, coords = _megatron_groups()
        _check_groups(rank, layout, groups, coords)
        result = RankResult(rank, coords, groups)
        for role in roles if build else ():
            try:
                chunks = build_on_meta(role, cfg.model, p)
            except Exception as exc:
                raise LayoutMismatch(f"rank {rank}: building the {role} failed: {_first_line(exc)}") from None
            result.params[role], result.layers[role] = _record(chunks)
            _check_local_shards(result, role, cfg.model, p.tensor)
    return result


def dry_run(cfg: RunConfig, world_size: Optional[int] = None, ranks: str = "auto",
            roles: Optional[Iterable[str]] = None) -> DryRunReport:
    """Check the layout of `cfg` over `world_size` ranks (default cluster.nnodes*gpus_per_node).
    Raises LayoutMismatch (a ConfigError: one line) on the first difference."""
    import torch.distributed as dist

    from ..models.builder import te_available

    if dist.is_initialized():
        raise ConfigError("the dry run joins a fake process group of its own: run it in a plain process, "
                          "not under torchrun or after init_process_group")
    from . import cpu_shim

    cpu_shim._quiet_known_warnings()  # Megatron's import-time advice about Apex / TE: nothing to act on here
    start = time.monotonic()
    world = world_size or cfg.cluster.world_size
    p = cfg.parallel
    layout = RankLayout(world, tp=p.tensor, pp=p.pipeline, cp=p.context)
    roles = list(roles) if roles is not None else ["actor"] + (["critic"] if cfg.critic.enabled else [])
    group_ranks, build_ranks = select_ranks(ranks, layout)
    build = set(build_ranks)
    with warnings.catch_warnings():
        # the local spec warns once per layer built: 32 ranks x 64 layers of it say nothing new
        warnings.filterwarnings("ignore", message="MLP requires ffn_hidden_size")
        results = [_examine_rank(rank, layout, cfg, roles, build=rank in build) for rank in group_ranks]
    summaries = {}
    for role in roles:
        summary = verify_across_ranks(results, layout, cfg.model, role)
        if summary is not None:
            summaries[role] = summary
    return DryRunReport(
        layout=layout, virtual_pipeline=p.virtual_pipeline if (p.virtual_pipeline or 1) > 1 else None,
        roles=roles, results=results, built=sorted(build), summaries=summaries,
        layer_spec="TransformerEngine" if te_available() else "local", seconds=time.monotonic() - start,
        peak_rss_mib=_peak_rss_mib(), dtype=cfg.model.dtype,
    )


# --- the report ---------------------------------------------------------------------------------


def _layers_text(layers: list[int]) -> str:
    if not layers:
        return "no layers"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
    return "layers " + ",".join(map(str, layers))


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def format_report(report: DryRunReport, max_group_lines: int = 3) -> str:
    lay = report.layout
    lines = [
        f"world {lay.world_size} = TP {lay.tp} x CP {lay.cp} x PP {lay.pp} x DP {lay.dp} "
        f"(VPP {report.virtual_pipeline or '-'}, order tp-cp-dp-pp); fake process group, meta device, "
        f"{report.layer_spec} layer spec",
        f"groups: Megatron's TP/CP/DP/PP/embedding groups equal the layout on {len(report.results)} of "
        f"{lay.world_size} ranks",
    ]
    shown = report.results if len(report.results) <= max_group_lines else \
        [report.results[0], report.results[len(report.results) // 2], report.results[-1]]
    for r in shown:
        parts = [f"{d.upper()} {_fmt(r.groups[d])}" for d in ("tp", "pp", "dp", "cp")]
        lines.append(f"  rank {r.rank}: " + ", ".join(parts))
    by_rank = {r.rank: r for r in report.results}
    for role in report.roles:
        built = [by_rank[k] for k in report.built if role in by_rank[k].params]
        lines.append(f"{role}: built on {len(built)} ranks")
        for stage in range(lay.pp):
            stage_ranks = [r for r in built if r.coords["pp"] == stage]
            if not stage_ranks:
                continue
            first = stage_ranks[0]
            counts = sorted({sum(math.prod(q.shape) for q in r.params[role]) for r in stage_ranks})
            nbytes = max(sum(q.nbytes for q in r.params[role]) for r in stage_ranks)
            chunks = "; ".join(_layers_text(c) for c in first.layers[role])
            count = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}..{counts[-1]:,}"
            lines.append(f"  PP stage {stage}: {chunks}; {count} parameters per rank "
                         f"({_gib(nbytes)} {report.dtype} weights)")
        summary = report.summaries.get(role)
        if summary is None:
            lines.append("  shapes checked per rank only: the built ranks do not cover every TP x PP coordinate "
                         "(use --ranks auto or all for the reassembly)")
        else:
            lines.append(f"  {len(summary.hf_shapes)} HF tensors reassemble to their HF shapes, each once; "
                         f"{summary.total_params:,} parameters = the analytic count")
    lines.append(f"OK ({report.seconds:.1f} s, peak RSS {report.peak_rss_mib:.0f} MiB)")
    return "\n".join(lines)
