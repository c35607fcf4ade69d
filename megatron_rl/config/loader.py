"""From YAML files and `key.path=value` overrides to a validated RunConfig.

    load_config(path, overrides=(), world_size=None) -> RunConfig

1. read the YAML file (a path that does not exist here but names a shipped preset, `demo.yaml` or
   `configs/demo.yaml`, is that preset); its top-level `include: [file, ...]` presets are composed
   first, in order, each one resolved next to the including file, else among the presets; later
   includes win over earlier ones and the file's own keys win over all of them (nested includes
   work; a cycle or a missing file is an error)
2. lay the result over the schema defaults, merge the `key.path=value` overrides last (values are
   YAML-typed: 3, 0.1, true, ['</answer>']), then resolve `${...}` interpolations (so a default
   such as `output_dir: outputs/${run.name}` follows run.name)
4. fill the model fields left unset from model.hf_path/config.json
5. validate with pydantic, then the cross-section rules of `checks.py`

Every user mistake ends in a ConfigError with one line naming the key (or the file) and the fix.
"""
from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError

import megatron_rl

from .checks import check_run, data_parallel_size, world_size_of
from .errors import ConfigError, dotted, from_validation_error
from .hf import fill_model_from_hf
from .layout import RankLayout
from .schema import RunConfig


def _presets_dir() -> Path:
    """The shipped presets (the repository's configs/): package data `megatron_rl/configs` in an
    installed wheel, the checkout's configs/ in an editable install (setuptools maps the name), and
    the folder next to the package when it runs from a checkout that is not installed."""
    spec = importlib.util.find_spec("megatron_rl.configs")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location).resolve()
    return Path(megatron_rl.__file__).resolve().parents[1] / "configs"


CONFIGS_DIR = _presets_dir()

PathLike = Union[str, "os.PathLike[str]"]


# --- YAML -------------------------------------------------------------------------------------


class _YAMLLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-6` as a float (YAML 1.2 style, like OmegaConf), keeps dates as
    strings and refuses duplicate keys (a silently dropped duplicate is a classic config bug)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key '{key_node.value}': keep one", key_node.start_mark
                        )
                    seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_YAMLLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)
            |[-+]?(?:[0-9][0-9_]*)\.[0-9_]*
            |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> dict:
    """One YAML file as a dict (empty file: {}); ConfigError with file and line on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a YAML file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_YAMLLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = exc.problem or exc.context or "cannot parse"
        if "duplicate key" in what:
            raise ConfigError(f"{where}: {what}") from None
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise ConfigError(f"{where}: YAML syntax error: {what}{context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got a {type(data).__name__}")
    return data


# --- includes ---------------------------------------------------------------------------------


def resolve_config_path(path: PathLike) -> Path:
    """`path` itself when it exists (or is absolute), else the shipped preset it names: `demo.yaml`
    and `configs/demo.yaml` both mean CONFIGS_DIR/demo.yaml, so the README's commands work from any
    directory with an installed package."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given
    parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
    preset = CONFIGS_DIR.joinpath(*parts) if parts else None
    return preset if preset is not None and preset.is_file() else given


def _find_include(name: str, including: Path) -> Path:
    for base in (including.parent, CONFIGS_DIR):
        candidate = (base / name).expanduser()
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"{including}: include '{name}' not found (looked in {including.parent} and {CONFIGS_DIR}): fix the path"
    )


def _to_omegaconf(data: dict, where: Path) -> DictConfig:
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
        raise ConfigError(f"{where}: {key + ': ' if key else ''}{_first_line(exc)}") from None


def compose(path: PathLike, _chain: tuple[Path, ...] = ()) -> DictConfig:
    """The file's keys over its includes' keys (includes merged in order), recursively."""
    path = Path(path).expanduser()
    if path.exists():
        path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain[_chain.index(path):], path))
        raise ConfigError(f"{_chain[-1]}: include cycle {cycle}: remove one of these includes")
    raw = read_yaml(path)
    includes = raw.pop("include", None)
    if includes is None:
        includes = []
    elif isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: include must be a list of YAML file paths, got {includes!r}")
    merged = OmegaConf.create({})
    for name in includes:
        merged = OmegaConf.merge(merged, compose(_find_include(name, path), (*_chain, path)))
    return OmegaConf.merge(merged, _to_omegaconf(raw, path))


# --- overrides --------------------------------------------------------------------------------

_KEY = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+)*$")


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Merge `key.path=value` items (YAML-typed values) over cfg, last one wins."""
    for item in overrides:
        key, sep, _ = str(item).partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ConfigError(f"override {item!r}: expected key.path=value, e.g. algorithm.kl.coef=0.01")
        if key.split(".")[0] == "include":
            raise ConfigError(f"override {item!r}: include cannot be overridden; include presets in the YAML file")
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={item.partition('=')[2]}"])
            if any(part.isdigit() for part in key.split(".")):
                # a list element (reward.sources.0.weight=2): update in place, a merge would replace the list
                OmegaConf.update(cfg, key, OmegaConf.select(parsed, key), merge=True)
            else:
                cfg = OmegaConf.merge(cfg, parsed)
        except yaml.YAMLError as exc:
            what = getattr(exc, "problem", None) or _first_line(exc)
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {what}") from None
        except IndexError:
            parts = key.split(".")
            listed = ".".join(parts[: next(i for i, p in enumerate(parts) if p.isdigit())])
            raise ConfigError(f"override {item!r}: {listed} has no such entry: give the whole list "
                              f"instead ({listed}=[...])") from None
        except TypeError:  # OmegaConf cannot merge a mapping into a list or the reverse
            raise ConfigError(f"override {item!r}: {key} holds a different kind of value (list vs mapping): "
                              "give the same kind") from None
        except (OmegaConfBaseException, ValueError, KeyError) as exc:
            raise ConfigError(f"override {item!r}: {_first_line(exc)}") from None
    return cfg


# --- defaults, interpolation, validation ------------------------------------------------------


def _schema_defaults() -> dict:
    """Every section's defaults as plain data (the model section has none: it must be given)."""
    out = {}
    for name, field in RunConfig.model_fields.items():
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            out[name] = default.model_dump() if hasattr(default, "model_dump") else default
    return out


def _deep_merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for key, value in top.items():
            out[key] = _deep_merge(base[key], value) if key in base else value
        return out
    return top


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def _resolve(data: dict) -> dict:
    try:
        return OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        prefix = f"{key}: " if key else ""
        raise ConfigError(f"{prefix}cannot resolve interpolation: {_first_line(exc)}: fix the ${{...}} reference") from None


def with_defaults(data: Union[dict, DictConfig]) -> DictConfig:
    """Config data laid over the schema defaults (nothing resolved yet)."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=False)
    data = {k: v for k, v in data.items() if k != "include"}
    return OmegaConf.create(_deep_merge(_schema_defaults(), data))


def build_config(data: Union[dict, DictConfig], world_size: Optional[int] = None) -> RunConfig:
    """Plain (or OmegaConf) config data -> validated RunConfig: defaults, interpolation, hf_path,
    pydantic, cross-section checks."""
    resolved = _resolve(with_defaults(data))
    if isinstance(resolved.get("model"), dict):
        resolved["model"] = fill_model_from_hf(resolved["model"])
    try:
        cfg = RunConfig.model_validate(resolved)
    except ValidationError as exc:
        raise from_validation_error(exc, RunConfig) from None
    check_run(cfg, world_size)
    return cfg


def load_config(path: PathLike, overrides: Sequence[str] = (), world_size: Optional[int] = None) -> RunConfig:
    """Read, compose, override, resolve and validate one run configuration (see the module doc)."""
    if world_size is not None and (not isinstance(world_size, int) or world_size < 1):
        raise ConfigError(f"world size {world_size!r}: must be a positive integer")
    # overrides go over the defaults too, so `reward.sources.0.weight=2` finds the default list
    cfg = apply_overrides(with_defaults(compose(resolve_config_path(path))), overrides)
    return build_config(cfg, world_size)


# --- output -----------------------------------------------------------------------------------


def resolved_yaml(cfg: RunConfig) -> str:
    """The fully resolved config as YAML; loading it back gives an equal RunConfig."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False, allow_unicode=True)


def save_resolved(cfg: RunConfig, path: PathLike) -> Path:
    """Write the resolved config atomically (temp file in the same directory + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# megatron-rl resolved config: every default and interpolation filled in\n" + resolved_yaml(cfg)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _ranks(group: list[int], limit: int = 8) -> str:
    if len(group) <= limit:
        return "[" + ", ".join(map(str, group)) + "]"
    return f"[{', '.join(map(str, group[:3]))}, ..., {group[-1]}] ({len(group)} ranks)"


def layout_summary(cfg: RunConfig, world_size: Optional[int] = None) -> str:
    """A few lines: the parallel layout, the first group of each kind, the batch arithmetic."""
    world = world_size_of(cfg, world_size)
    p, a = cfg.parallel, cfg.algorithm
    layout = RankLayout(world, tp=p.tensor, pp=p.pipeline, cp=p.context)
    dp = data_parallel_size(cfg, world)
    n = cfg.rollout.n_samples_per_prompt
    vpp = p.virtual_pipeline or 1
    lines = [
        f"world size {world} = TP {p.tensor} x CP {p.context} x PP {p.pipeline} x DP {dp}"
        f" (VPP {p.virtual_pipeline or '-'}, order tp-cp-dp-pp)",
        f"rank 0 groups: TP {_ranks(layout.group_of('tp'))}, CP {_ranks(layout.group_of('cp'))}, "
        f"PP {_ranks(layout.group_of('pp'))}, DP {_ranks(layout.group_of('dp'))}",
    ]
    if cfg.model.num_layers:
        per_stage = cfg.model.num_layers // p.pipeline
        chunks = f" ({vpp} virtual chunks of {per_stage // vpp})" if vpp > 1 else ""
        lines.append(f"layers per pipeline stage: {per_stage} x {p.pipeline} stages{chunks}")
    seqs = a.prompts_per_step * n
    mini_batches = a.prompts_per_step // a.mini_batch_prompts
    mini_seqs = a.mini_batch_prompts * n
    per_rank = mini_seqs // dp
    mbs = cfg.actor.micro_batch_size
    lines += [
        f"per step: {a.prompts_per_step} prompts x {n} samples = {seqs} sequences"
        f" ({seqs // dp} per DP rank)",
        f"mini-batches per step: {mini_batches} of {a.mini_batch_prompts} prompts = {mini_seqs} sequences"
        f" ({per_rank} per DP rank), x {a.epochs} epoch(s) = {_n(mini_batches * a.epochs, 'optimizer step')}",
        f"micro-batches per mini-batch per DP rank: {per_rank // mbs} of {mbs} sequences",
    ]
    return "\n".join(lines)


__all__ = [
    "CONFIGS_DIR", "ConfigError", "apply_overrides", "build_config", "compose", "dotted", "resolve_config_path",
    "layout_summary", "load_config", "read_yaml", "resolved_yaml", "save_resolved",
]
