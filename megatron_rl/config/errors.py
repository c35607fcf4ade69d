"""ConfigError and the translation of pydantic's ValidationError into one line.

A user who mistypes a key, a value or a file should read one line naming the dotted key and the
fix, never a traceback or pydantic's multi-line report.
"""
from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, Iterable, Literal, Optional, Union

from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """A mistake in a run configuration; the message is one line naming the key and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def dotted(loc: Iterable[Any]) -> str:
    """('reward', 'sources', 0, 'type') -> 'reward.sources[0].type'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, choices: Iterable[str]) -> Optional[str]:
    found = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


# --- walking the schema along an error location ---------------------------------------------


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, Optional/Union flattened."""
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        out = []
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                out.extend(_unwrap(arg))
        return out
    return [annotation]


def _step(annotation: Any, part: Any) -> Any:
    """The annotation one location step below `annotation` (a field name or a list index)."""
    for alt in _unwrap(annotation):
        if isinstance(part, int) and typing.get_origin(alt) in (list, tuple):
            args = typing.get_args(alt)
            return args[0] if args else None
        if isinstance(part, str) and isinstance(alt, type) and issubclass(alt, BaseModel):
            field = alt.model_fields.get(part)
            return field.annotation if field is not None else None
    return None


def _annotation_at(root: type[BaseModel], loc: tuple) -> Any:
    annotation: Any = root
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    return annotation


def _model_at(root: type[BaseModel], loc: tuple) -> Optional[type[BaseModel]]:
    for alt in _unwrap(_annotation_at(root, loc)):
        if isinstance(alt, type) and issubclass(alt, BaseModel):
            return alt
    return None


def _literal_choices(annotation: Any) -> list[str]:
    for alt in _unwrap(annotation):
        if typing.get_origin(alt) is Literal:
            return [str(a) for a in typing.get_args(alt)]
    return []


# --- one error, one line ----------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _clean_loc(loc: tuple) -> tuple:
    # pydantic adds tags such as 'function-after[...]' or a type name for some unions; drop them
    return tuple(p for p in loc if isinstance(p, int) or not re.search(r"[\[\]]", str(p)))


def format_error(err: dict, root: type[BaseModel], prefix: tuple = ()) -> str:
    """One pydantic error dict -> one line naming the dotted key and, where we can, the fix."""
    loc = _clean_loc(tuple(err.get("loc", ())))
    full = prefix + loc
    key = dotted(full)
    kind = err.get("type", "")
    msg = err.get("msg", "")
    value = err.get("input")

    if kind == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        fields = list(parent.model_fields) if parent is not None else []
        guess = did_you_mean(str(loc[-1]), fields)
        if guess:
            return f"unknown key '{key}': did you mean '{guess}'?"
        where = f"'{dotted(full[:-1])}'" if full[:-1] else "the top level"
        return f"unknown key '{key}': {where} takes {', '.join(fields)}"

    if kind == "literal_error":
        choices = _literal_choices(_annotation_at(root, loc))
        text = f"{key}: {_show(value)} is not one of {', '.join(choices)}"
        guess = did_you_mean(str(value), choices)
        return text + (f": did you mean '{guess}'?" if guess else "")

    if kind == "missing":
        choices = _literal_choices(_annotation_at(root, loc))
        hint = f": set it to one of {', '.join(choices)}" if choices else ": set it"
        if full == ("model",):
            hint = (": include a model preset (e.g. include: [models/qwen2.5-0.5b.yaml]) "
                    "or set model.hf_path")
        return f"{key} is required{hint}"

    if kind in ("value_error", "assertion_error"):
        text = re.sub(r"^(Value error|Assertion failed), ", "", msg)
        # validators on a section already name their key; otherwise say where it happened
        if key and not text.startswith(key):
            text = f"{key}: {text}"
        return text

    if isinstance(value, (dict, list)) and kind.endswith("_type") and kind not in ("list_type", "dict_type"):
        return f"{key}: {msg} (got a {type(value).__name__})"
    return f"{key}: {msg} (got {_show(value)})"


def _priority(err: dict) -> int:
    # an unknown key (a typo) often explains the errors after it: report it first
    return 0 if err.get("type") == "extra_forbidden" else 1


def from_validation_error(exc: ValidationError, root: type[BaseModel], prefix: tuple = ()) -> ConfigError:
    errors = sorted(exc.errors(), key=_priority)
    line = format_error(errors[0], root, prefix)
    rest = len(errors) - 1
    if rest:
        line += f" (and {rest} more error{'s' if rest > 1 else ''})"
    return ConfigError(line)
