"""Unit-test rewards for coding tasks (source type `code`): run the response's program in the sandbox.

The program is the last ```python (or ```py / ```python3) fenced block of the response, else the
last fenced block with no language, else the whole response.

The tests are the sample's `metadata["tests"]` when present, else its `answer`; either a JSON string
or the parsed value, in one of these shapes:

    {"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}    stdin/stdout pairs (APPS / TACO layout)
    [{"input": "1 2\\n", "output": "3\\n"}, ...]             the same, as a list of pairs
    {"asserts": ["assert add(1, 2) == 3", ...]}              test blocks run after the program
    ["assert add(1, 2) == 3", ...]                           the same, as a bare list

stdin/stdout: each pair is one run of the program (as `__main__`) with that stdin; it passes when it
exits 0 and its stdout equals the expected output up to trailing whitespace on each line and
trailing blank lines. Asserts: one run; the program is executed as a module (`__name__ ==
"solution"`, so an `if __name__ == "__main__":` demo does not run), then each test in its
namespace: `assert <expr> == <literal>` is judged in the parent against the literal (sandbox.split_assert);
any other block would pass when it does not raise, a verdict the program can forge, so a sample
with such a block fails (a data problem, named in one line) unless the source sets
`unjudged_asserts: true`. Call-based tests (`fn_name`) are not supported: write them as asserts.

Score: the share of tests passed, in [0, 1]; a wrong or crashing program scores what it passed.
The sample *fails* (runner: failed, scored 0, counted in reward/failed and reward/code_failed, the
reason as its error line) when the sandbox had to stop the program: it hit the wall-clock or CPU
limit or was killed (a runaway; this ends the judging, so one looping program costs one
`time_limit_s`, not one per test), or it tried something a layer blocks (network, writing outside
its directory, ...). It also fails when it has no usable tests (a data problem) or the sandbox
itself cannot run.

`reward.timeout_s` bounds a whole sample (all its runs): raise it above tests x time_limit_s for
long test lists. Programs run in `sandbox.run` subprocesses of the reward worker, never in the
trainer.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any

from .base import RewardInput
from .sandbox import ALL_LAYERS, Limits, SandboxError, probe, run, split_assert

logger = logging.getLogger("megatron_rl.rewards")

# without these a program meets only rlimits and the audit hook (which Python code can undo)
KERNEL_LAYERS = ("user_ns", "net_ns", "readonly_fs", "hidden_fs", "disk_quota", "seccomp")
DEFAULT_TIME_LIMIT_S = 5.0
DEFAULT_MEMORY_MB = 1024
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON = ("python", "py", "python3")


def extract_program(response: str) -> str:
    """The last python-tagged fenced block, else the last untagged one, else the whole response."""
    blocks = _FENCE.findall(response)
    for wanted in (lambda lang: lang.lower() in _PYTHON, lambda lang: not lang):
        found = [body for lang, body in blocks if wanted(lang)]
        if found:
            return found[-1]
    return response


def _stdin_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value) + "\n"  # a list of lines
    raise ValueError(f"code reward: {where} must be a string (or a list of lines), got {type(value).__name__}")


def parse_tests(raw: Any) -> tuple[str, list]:
    """("stdio", [(stdin, expected stdout), ...]) or ("asserts", [code, ...]); ValueError saying why not."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise ValueError("code reward needs tests: put them in metadata['tests'] or the answer "
                         "(stdin/stdout pairs or asserts: see docs/rewards.md)")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ValueError(f"code reward: the tests are not JSON: {raw[:80]!r}") from None
    if isinstance(raw, dict) and "fn_name" in raw:
        raise ValueError("code reward: call-based tests (fn_name) are not supported: write them as asserts")
    if isinstance(raw, dict) and "inputs" in raw and "outputs" in raw:
        ins, outs = raw["inputs"], raw["outputs"]
        if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
            raise ValueError("code reward: 'inputs' and 'outputs' must be lists of the same length")
        pairs = list(zip(ins, outs))
    elif isinstance(raw, list) and raw and all(isinstance(t, dict) for t in raw):
        if not all("input" in t and "output" in t for t in raw):
            raise ValueError("code reward: each test pair needs 'input' and 'output'")
        pairs = [(t["input"], t["output"]) for t in raw]
    else:
        asserts = raw.get("asserts") if isinstance(raw, dict) else raw
        if not isinstance(asserts, list) or not asserts or not all(isinstance(a, str) for a in asserts):
            raise ValueError("code reward: tests must be {'inputs': [...], 'outputs': [...]}, a list of "
                             "{'input', 'output'} pairs, or {'asserts': [code, ...]}")
        return "asserts", list(asserts)
    if not pairs:
        raise ValueError("code reward: the test list is empty")
    return "stdio", [(_stdin_text(i, "a test input"), _stdin_text(o, "a test output")) for i, o in pairs]


def _normalize(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def same_output(got: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""
    return _normalize(got) == _normalize(expected)


class CodeReward:
    """Source `code`: share of the sample's tests the response's program passes (see module docstring)."""

    def __init__(self, time_limit_s: float = DEFAULT_TIME_LIMIT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                 unjudged_asserts: bool = False):
        self.limits = Limits(time_s=float(time_limit_s), memory_mb=int(memory_mb))
        self.name = "code"
        # test blocks judged inside the program's process, which it can forge: off unless accepted
        self.unjudged_asserts = bool(unjudged_asserts)

    @classmethod
    def from_source(cls, source: Any, key: str) -> "CodeReward":
        from megatron_rl.config.errors import ConfigError

        reward = cls(time_limit_s=getattr(source, "time_limit_s", None) or DEFAULT_TIME_LIMIT_S,
                     memory_mb=getattr(source, "memory_mb", None) or DEFAULT_MEMORY_MB,
                     unjudged_asserts=bool(getattr(source, "unjudged_asserts", None)))
        try:
            layers = probe()
        except SandboxError as exc:
            raise ConfigError(f"{key}.type: the code sandbox cannot run on this machine: {exc}") from None
        missing = [name for name in ALL_LAYERS if name not in layers]
        weak = [name for name in KERNEL_LAYERS if name not in layers]
        if weak and not getattr(source, "weak_sandbox", None):
            raise ConfigError(f"{key}: the code sandbox lacks its kernel-level layers here ({', '.join(weak)}; "
                              "user namespaces are off, e.g. Docker's default seccomp profile), leaving a Python "
                              "audit hook that a program can switch off as the only guard: enable user namespaces "
                              f"(docs/rewards.md), or accept the weaker sandbox with {key}.weak_sandbox=true")
        if missing:
            logger.warning("code reward: sandbox layers %s; not available here: %s (see docs/rewards.md)",
                           ", ".join(layers), ", ".join(missing))
        else:
            logger.info("code reward: sandbox layers %s", ", ".join(layers))
        return reward

    def __call__(self, inp: RewardInput) -> float:
        raw = inp.metadata["tests"] if "tests" in (inp.metadata or {}) else inp.answer
        kind, tests = parse_tests(raw)
        program = extract_program(inp.response)
        if kind == "asserts":
            unjudged = [k for k, t in enumerate(tests) if split_assert(t) is None]
            if unjudged and not self.unjudged_asserts:
                raise ValueError(f"code reward: test {unjudged[0]} is not of the form 'assert <expr> == <literal>', "
                                 "so only the program's own process could judge it, and a program can forge that: "
                                 "rewrite the tests in that form, or accept it with unjudged_asserts: true")
            result = _stopped(run(program, asserts=tests, limits=self.limits))
            return sum(result.verdicts) / len(tests)
        passed = 0
        for stdin, expected in tests:
            result = _stopped(run(program, stdin=stdin, limits=self.limits))
            passed += result.status == "ok" and same_output(result.stdout, expected)
        return passed / len(tests)


class SandboxStopped(RuntimeError):
    """The sandbox stopped the program (limit, kill, blocked operation): the sample is failed."""


def _stopped(result):
    """`result`, or SandboxStopped when the sandbox had to stop the program: a runaway or a blocked
    operation is reported as a failed sample, not scored as a merely wrong answer."""
    if result.status in ("timeout", "killed") or "sandbox: " in result.reason:
        raise SandboxStopped(f"program {result.status}: {result.reason}")
    return result
