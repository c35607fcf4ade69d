"""Prompt datasets: rows from JSONL / JSON / Parquet files (or a `datasets.save_to_disk` directory),
rendered with the chat template, tokenized once at load and kept in memory.

    tok = load_tokenizer(path)
    train = PromptDataset.from_config(cfg.data, tok, split="train")   # "eval": cfg.data.eval_path
    item = train[i]   # PromptItem(index, prompt_ids, prompt_text, answer, metadata)

Rows. `prompt_key` holds a string or a chat message list `[{"role": ..., "content": ...}, ...]`;
`answer_key` (optional: a file without it gives answer=None, which only verifiable rewards mind) holds
the reference answer, turned into a string; every other field goes to `metadata` unchanged.

Rendering. With `apply_chat_template`, a string becomes `[{"role": "user", "content": text}]` and the
messages go through `tokenizer.apply_chat_template(..., add_generation_prompt=True, tokenize=False)`;
the rendered text is tokenized without adding special tokens (the template writes its own BOS, if
any). Without it the string is tokenized as is, with whatever special tokens the tokenizer adds by
itself (a Llama BOS, nothing for Qwen). `prompt_text` is the text the ids encode.

Filtering. Prompts longer than `max_prompt_len` tokens are dropped with one warning that counts them
(what verl and slime do); a dataset left empty is an error. Indices count the kept rows.

Why JSONL is read with the json module and Parquet with pyarrow, not through `datasets.load_dataset`:
a malformed line or a missing key must end in one line naming the file and the 1-based line (row),
which the json module gives directly and datasets' loader does not (it reports an Arrow parse error
on a block); datasets' loader also refuses rows whose fields change type between lines, and it
writes an Arrow cache under ~/.cache on every rank that loads. A prompt set (thousands to ~100k rows)
fits in memory as Python lists. `datasets` is still used, lazily, for a directory written by
`Dataset.save_to_disk`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

from ..config.errors import ConfigError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet", ".pq")
SUPPORTED = "a .jsonl, .json or .parquet file, a directory of them, or a Dataset.save_to_disk directory"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


class DataError(ConfigError):
    """A mistake in a data file or a data path: one line naming the file (and line) and the fix."""


@dataclass(frozen=True)
class PromptItem:
    index: int  # position in the dataset (after filtering)
    prompt_ids: list[int]
    prompt_text: str  # the text prompt_ids encode (after the chat template, when applied)
    answer: Optional[str]
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Row:
    where: str  # "file:line 3" / "file:row 3" for messages
    values: dict


# --- the tokenizer ----------------------------------------------------------------------------


def load_tokenizer(path: Optional[PathLike]):
    """`transformers.AutoTokenizer` from a local directory (never the hub). A tokenizer without a pad
    token gets its EOS as pad (batched generation and training need one)."""
    if path is None:
        raise DataError("no tokenizer path: set model.hf_path to a local HF checkpoint directory")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"tokenizer directory '{path}' does not exist: point model.hf_path at a local "
                        "HF checkpoint directory (tokenizer.json / tokenizer_config.json)")
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(f"tokenizer directory '{path}' holds none of {', '.join(TOKENIZER_FILES)}: point "
                        "model.hf_path at a local HF checkpoint directory with its tokenizer files")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # A tokenizer_config naming the generic fast class means "tokenizer.json as it is". AutoTokenizer
    # (transformers 5) ignores that when a config.json sits beside it and builds the model type's
    # class instead (Qwen2Tokenizer re-derives its pre-tokenizer: a character tokenizer loses spaces).
    loader = PreTrainedTokenizerFast if _tokenizer_class(p) in _GENERIC_FAST else AutoTokenizer
    try:
        tokenizer = loader.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; the user needs one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot load a tokenizer from '{path}' ({type(exc).__name__}: {first}): "
                        "the directory needs tokenizer.json or the files of a slow tokenizer") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


_GENERIC_FAST = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _tokenizer_class(directory: Path) -> Optional[str]:
    try:
        return json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None


def export_tokenizer(tokenizer, source: Optional[PathLike], out_dir: PathLike) -> None:
    """Put the tokenizer beside an exported model in `out_dir`.

    The files of the directory it was loaded from (`source`) are copied byte for byte, so what reads
    the export (an SGLang server with its own transformers version, `load_tokenizer`) sees the
    original files rather than this transformers version's re-serialisation of them. Without a
    source directory, `save_pretrained`."""
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(source).expanduser() if source is not None else None
    if src is not None and src.is_dir() and src.resolve() == out.resolve():
        return  # exporting next to the tokenizer it came from
    files = [f for f in src.iterdir() if f.is_file() and _is_tokenizer_file(f.name)] if src and src.is_dir() else []
    if not files:
        tokenizer.save_pretrained(str(out))
        return
    for f in files:
        tmp = out / f".{f.name}.tmp"
        shutil.copyfile(f, tmp)
        os.replace(tmp, out / f.name)


def _is_tokenizer_file(name: str) -> bool:
    return (name in TOKENIZER_FILES or name.startswith("tokenizer") or name in (
        "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "merges.txt"))


# --- reading rows -----------------------------------------------------------------------------


def _iter_jsonl(path: Path, label: str) -> Iterator[_Row]:
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise DataError(f"{label}: line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}): "
                                "fix or remove that line") from None
            if not isinstance(value, dict):
                raise DataError(f"{label}: line {lineno} is a JSON {type(value).__name__}, not an object: "
                                "each line must be one {\"key\": value, ...} row")
            yield _Row(f"{label}: line {lineno}", value)


def _iter_json(path: Path, label: str) -> Iterator[_Row]:
    """A .json file: one array of objects, or JSON Lines under a .json name."""
    text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" or text.lstrip().startswith("{"):  # several values: JSON Lines
            yield from _iter_jsonl(path, label)
            return
        raise DataError(f"{label}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
                        "fix the file") from None
    if isinstance(value, dict):  # a single row
        value = [value]
    if not isinstance(value, list):
        raise DataError(f"{label}: holds a JSON {type(value).__name__}: expected an array of row objects")
    for i, row in enumerate(value, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{label}: row {i} is a JSON {type(row).__name__}, not an object")
        yield _Row(f"{label}: row {i}", row)


def _iter_parquet(path: Path, label: str) -> Iterator[_Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{label}: reading Parquet needs pyarrow: pip install 'megatron-rl[train]'") from None
    try:
        table = pq.read_table(str(path))
    except Exception as exc:  # noqa: BLE001 - pyarrow's ArrowInvalid and OSError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{label}: cannot read it as Parquet ({first}): is it a Parquet file?") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield _Row(f"{label}: row {i}", row)


def _iter_saved_dataset(path: Path, label: str) -> Iterator[_Row]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{label}: a save_to_disk directory needs `datasets`: pip install 'megatron-rl[train]'") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{label}: a DatasetDict without a 'train' split (has {', '.join(ds)}): "
                            "point the path at one split's directory")
        ds = ds["train"]
    for i, row in enumerate(ds.to_list(), start=1):
        yield _Row(f"{label}: row {i}", row)


def _files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix.lower() in JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES)


def iter_rows(path: PathLike, key: str = "data path") -> Iterator[_Row]:
    """Every row of `path` with a location string for messages; `key` names the setting in errors."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{key}: file '{path}' does not exist: fix the path ({SUPPORTED})")
    if p.is_dir():
        saved = ((p / "state.json").is_file() and (p / "dataset_info.json").is_file()) or (p / "dataset_dict.json").is_file()
        if saved:
            yield from _iter_saved_dataset(p, str(path))
            return
        files = _files_in(p)
        if not files:
            raise DataError(f"{key}: directory '{path}' holds no .jsonl, .json or .parquet file")
        for f in files:
            yield from _iter_file(f, key)
        return
    yield from _iter_file(p, key)


def _iter_file(p: Path, key: str) -> Iterator[_Row]:
    suffix = p.suffix.lower()
    label = str(p)
    if suffix in JSONL_SUFFIXES:
        return _iter_jsonl(p, label)
    if suffix in JSON_SUFFIXES:
        return _iter_json(p, label)
    if suffix in PARQUET_SUFFIXES:
        return _iter_parquet(p, label)
    raise DataError(f"{key}: '{p}' has an unknown extension '{p.suffix}': use {SUPPORTED}")


# --- rows -> prompts --------------------------------------------------------------------------


def _as_messages(value: Any, where: str, prompt_key: str) -> list[dict]:
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise DataError(f"{where}: '{prompt_key}' is a {type(value).__name__}: it must be a string or a "
                        "non-empty list of {\"role\": str, \"content\": str} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _key_list(values: dict, limit: int = 12) -> str:
    keys = [repr(k) for k in values]
    if not keys:
        return "no keys"
    more = len(keys) - limit
    return ", ".join(keys[:limit]) + (f" and {more} more" if more > 0 else "")


def _answer_text(value: Any) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def render_prompt(tokenizer, prompt: Union[str, Sequence[dict]], apply_chat_template: bool) -> str:
    """The text a prompt becomes before tokenization (the chat template's output, or the string)."""
    if apply_chat_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert isinstance(prompt, str)
    return prompt


class PromptDataset:
    """Prompts tokenized at load, indexable; see the module docstring."""

    def __init__(self, items: list[PromptItem], source: str = ""):
        self._items = items
        self.source = source

    @classmethod
    def from_config(cls, data, tokenizer, split: str = "train") -> "PromptDataset":
        """`data` is a `DataConfig`; split "train" reads `data.train_path`, "eval" `data.eval_path`."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        key = f"data.{split}_path"
        path = data.train_path if split == "train" else data.eval_path
        if not path:
            raise DataError(f"{key} is not set: point it at {SUPPORTED}")
        return cls.load(path, tokenizer, prompt_key=data.prompt_key, answer_key=data.answer_key,
                        max_prompt_len=data.max_prompt_len, apply_chat_template=data.apply_chat_template,
                        key=key)

    @classmethod
    def load(cls, path: PathLike, tokenizer, *, prompt_key: str = "prompt", answer_key: Optional[str] = "answer",
             max_prompt_len: Optional[int] = None, apply_chat_template: bool = True,
             key: str = "data path") -> "PromptDataset":
        prompts: list[Union[str, list[dict]]] = []
        answers: list[Optional[str]] = []
        metas: list[dict] = []
        saw_answer = False
        for row in iter_rows(path, key):
            values = row.values
            if prompt_key not in values:
                raise DataError(f"{row.where}: no '{prompt_key}' key (the row has {_key_list(values)}): "
                                "set data.prompt_key to the field that holds the prompt")
            prompt = values[prompt_key]
            if isinstance(prompt, str):
                if not prompt:
                    raise DataError(f"{row.where}: '{prompt_key}' is an empty string: remove the row")
            else:
                prompt = _as_messages(prompt, row.where, prompt_key)
                if not apply_chat_template:
                    raise DataError(f"{row.where}: '{prompt_key}' holds chat messages but data.apply_chat_template "
                                    "is false: set it to true (or store plain strings)")
            answer = values.get(answer_key) if answer_key else None
            saw_answer = saw_answer or (answer_key in values if answer_key else False)
            prompts.append(prompt)
            answers.append(_answer_text(answer))
            metas.append({k: v for k, v in values.items() if k != prompt_key and k != answer_key})
        if not prompts:
            raise DataError(f"{key}: '{path}' holds no rows: point it at a prompt file")
        if answer_key and not saw_answer:
            logger.info("%s: no '%s' field in %s: every answer is None (rule-based rewards need one)",
                        key, answer_key, path)

        if apply_chat_template and getattr(tokenizer, "chat_template", None) is None:
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise DataError(f"data.apply_chat_template is true but the tokenizer '{name}' has no chat template: "
                            "set data.apply_chat_template=false or use a tokenizer with one")
        texts = [render_prompt(tokenizer, p, apply_chat_template) for p in prompts]
        encoded = tokenizer(texts, add_special_tokens=not apply_chat_template)["input_ids"]

        items: list[PromptItem] = []
        dropped, longest = 0, 0
        for ids, text, answer, meta in zip(encoded, texts, answers, metas):
            ids = list(ids)
            if max_prompt_len is not None and len(ids) > max_prompt_len:
                dropped += 1
                longest = max(longest, len(ids))
                continue
            items.append(PromptItem(len(items), ids, text, answer, meta))
        if dropped:
            if not items:
                shortest = min(len(ids) for ids in encoded)
                raise DataError(f"{key}: all {dropped} prompts in '{path}' are longer than data.max_prompt_len="
                                f"{max_prompt_len} tokens (the shortest has {shortest}): raise data.max_prompt_len")
            logger.warning("%s: dropped %d of %d prompts longer than data.max_prompt_len=%d tokens (longest %d) "
                           "from %s", key, dropped, len(encoded), max_prompt_len, longest, path)
        return cls(items, source=str(path))

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> PromptItem:
        return self._items[index]

    def __iter__(self) -> Iterator[PromptItem]:
        return iter(self._items)

    def get(self, indices: Iterable[int]) -> list[PromptItem]:
        """The items at `indices` (a sampler's batch), in that order."""
        return [self._items[i] for i in indices]

    @property
    def max_len(self) -> int:
        return max((len(item.prompt_ids) for item in self._items), default=0)

    def __repr__(self) -> str:
        return f"PromptDataset({len(self)} prompts from {self.source or '<memory>'})"


def check_same_tokenizer(path: str, policy_tokenizer_path: Optional[str], key: str, *, what: str) -> None:
    """A model beside the policy (the `what`: a reward model, a distillation teacher) reads the
    policy's token ids: when its checkpoint has a tokenizer, it must be the policy's."""
    has_tokenizer = any((Path(path) / f).is_file() for f in TOKENIZER_FILES)
    if not has_tokenizer or policy_tokenizer_path is None:
        return  # nothing to compare beyond the vocab size (the caller checks it)
    mine, theirs = load_tokenizer(path).get_vocab(), load_tokenizer(policy_tokenizer_path).get_vocab()
    if mine != theirs:
        differ = sorted(set(mine.items()) ^ set(theirs.items()))[:1]
        raise ConfigError(f"{key}: the {what}'s tokenizer ({path}) differs from the policy's "
                          f"({policy_tokenizer_path}; first difference {differ}): the {what} reads the "
                          "policy's token ids, so it must use the policy's tokenizer (data.tokenizer)")
