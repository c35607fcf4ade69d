"""A user reward function given by import path (source type `python`, `path: module:function`).

The path is `package.module:function` (the module importable: installed, or its directory on
PYTHONPATH) or `path/to/file.py:function` (a relative file path is taken from the working directory
at build time). `function` may be dotted (`module:Class.method`). It is resolved when the runner is
built: a missing module, a missing attribute, something not callable or a signature the runner
cannot call fails then, with a one-line `ConfigError` naming `reward.sources[i].path`.

Calling convention: the function is called with keyword arguments taken from the sample,

    fn(prompt=str, response=str, answer=Optional[str], finish_reason=str, metadata=dict, steps=tuple)

passing only the ones its signature names (all of them when it takes **kwargs), so
`def score(response, answer): ...` works. It returns a float (a bool or an int is fine: True -> 1.0);
with `per_step: true` (process supervision) it returns one float per entry of `steps`.
Raising, returning something else, NaN or inf marks the sample failed for this source (it scores 0
there) without stopping the run; so does running longer than `reward.timeout_s`.

The function runs in the runner's worker processes (spawned, so it cannot see the trainer's state):
module-level setup (loading a table, a tokenizer) happens once per worker, not per call.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable

from .base import RewardInput, as_score, as_step_scores

ARGUMENTS = ("prompt", "response", "answer", "finish_reason", "metadata", "steps")


class ResolveError(Exception):
    """Why a `module:function` path does not resolve (the message goes after the config key)."""


def _import_file(file: str):
    name = "_megatron_rl_reward_" + hashlib.sha1(file.encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ResolveError(f"cannot load {file!r} as a Python module: give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def normalize_path(path: str) -> str:
    """Make a `file.py:function` path absolute (workers may not share the cwd); dotted paths as is."""
    module, sep, attr = str(path).rpartition(":")
    if sep and module.endswith(".py"):
        return f"{os.path.abspath(os.path.expanduser(module))}:{attr}"
    return str(path)


def resolve(path: str) -> Callable:
    """`module:function` or `file.py:function` -> the callable; raises ResolveError saying why."""
    module_name, sep, attr = str(path).rpartition(":")
    if not sep or not module_name or not attr:
        raise ResolveError(f"{path!r} is not 'module:function': write e.g. 'my_rewards:score' or 'rewards.py:score'")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise ResolveError(f"file {module_name!r} (from {path!r}) does not exist: fix the path")
            module = _import_file(module_name)
        else:
            module = importlib.import_module(module_name)
    except ResolveError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) and module_name[len(exc.name):][:1] in ("", "."):
            raise ResolveError(
                f"cannot import module {module_name!r} (from {path!r}): no module named {exc.name!r}: "
                "install it, add its directory to PYTHONPATH, or give a .py file path"
            ) from None
        raise ResolveError(f"importing {module_name!r} (from {path!r}) failed: {type(exc).__name__}: {exc}: fix the module") from None
    except BaseException as exc:  # the module itself raised while importing (SystemExit included)
        raise ResolveError(f"importing {module_name!r} (from {path!r}) failed: {type(exc).__name__}: {exc}: fix the module") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            from megatron_rl.config.errors import did_you_mean

            names = [n for n in dir(obj) if not n.startswith("_")]
            guess = did_you_mean(part, names)
            hint = f": did you mean {guess!r}?" if guess else ": check the function name"
            raise ResolveError(f"{module_name!r} has no attribute {part!r} (from {path!r}){hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ResolveError(f"{path!r} is a {type(obj).__name__}, not a function: point it at a function")
    return obj


def call_plan(fn: Callable, path: str) -> tuple[str, ...]:
    """The keyword arguments to pass `fn`; raises ResolveError for a signature we cannot call."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ARGUMENTS  # a builtin or C function without a signature: give it everything
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return ARGUMENTS
    names = []
    for p in params:
        if p.name in ARGUMENTS and p.kind is not p.POSITIONAL_ONLY:
            names.append(p.name)
        elif p.kind in (p.VAR_POSITIONAL,) or p.default is not p.empty:
            continue
        else:
            raise ResolveError(
                f"{path!r} takes a required argument {p.name!r} the runner cannot give: name its "
                f"parameters among {', '.join(ARGUMENTS)} (or take **kwargs)"
            )
    return tuple(names)


class PythonFunctionReward:
    """Source `python`: calls a user function (see the module docstring for the convention)."""

    def __init__(self, path: str, per_step: bool = False):
        self.path = normalize_path(path)
        self.fn = resolve(self.path)
        self.arguments = call_plan(self.fn, self.path)
        self.name = "python"
        self.per_step = per_step  # one score per step of the response (process supervision)

    def __getstate__(self):
        return {"path": self.path, "per_step": self.per_step}

    def __setstate__(self, state):
        self.__init__(state["path"], state.get("per_step", False))  # re-import in the worker process

    def __call__(self, inp: RewardInput):
        kwargs = {name: getattr(inp, name) for name in self.arguments}
        value = self.fn(**kwargs)
        return as_step_scores(value, len(inp.steps), self.path) if self.per_step else as_score(value, self.path)

    @classmethod
    def from_source(cls, source: Any, key: str) -> "PythonFunctionReward":
        from megatron_rl.config.errors import ConfigError

        try:
            return cls(source.path, per_step=bool(getattr(source, "per_step", False)))
        except ResolveError as exc:
            raise ConfigError(f"{key}.path: {exc}") from None
