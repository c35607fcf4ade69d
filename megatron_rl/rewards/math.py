"""Rule-based math answer checking with math-verify (source type `math`).

Score 1.0 when the response's final answer is mathematically equal to the gold `answer`, else 0.0.
The final answer is, in order of preference:

1. the content of the last `\\boxed{...}` (or `\\fbox{...}`) in the response,
2. else the last `<answer>...</answer>` span,
3. else what math-verify extracts from the whole response (its last LaTeX expression or number).

A response with no answer at all scores 0. A sample without a gold answer (None or blank) raises, so
the runner marks it failed: that is a data problem (check `data.answer_key`), not a wrong answer.

math-verify bounds its own parse/verify time with `signal.alarm`, which only works in a process's
main thread and would fight the runner's own timer; both are switched off here
(`parsing_timeout=None`, `timeout_seconds=None`) and the runner enforces `reward.timeout_s`.
math_verify is imported on the first call, so importing this module stays cheap.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Optional

from .base import RewardInput

_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _math_verify():
    import math_verify

    return math_verify


def last_boxed(text: str) -> Optional[str]:
    """The content of the last `\\boxed{...}` / `\\fbox{...}` (braces balanced), or `\\boxed x`'s x."""
    for match in reversed(list(_BOX.finditer(text))):
        i = match.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j]
            continue  # unbalanced (truncated response): try an earlier box
        token = re.match(r"[^\s$]+", text[i:])
        if i > match.end() and token:  # `\boxed 5`
            return token.group(0)
    return None


def _parse(text: str) -> list:
    return _math_verify().parse(text, parsing_timeout=None)


def _parse_latex_or_plain(text: str) -> list:
    """Parse a bare answer: as LaTeX math first (`\\frac12`, `0.5`, `x^2+1`), then as plain text."""
    text = text.strip()
    if not text:
        return []
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return _parse(text)
    return _parse(f"${text}$") or _parse(text)


@lru_cache(maxsize=4096)
def _gold(answer: str) -> tuple:
    parsed = _parse_latex_or_plain(answer)
    if not parsed:
        raise ValueError(f"math reward: cannot parse the gold answer {answer!r:.80}")
    return tuple(parsed)


def extract_answer(response: str) -> list:
    """math-verify's parse of the response's final answer (empty when it has none)."""
    boxed = last_boxed(response)
    if boxed is not None:
        return _parse_latex_or_plain(boxed)
    spans = _ANSWER.findall(response)
    if spans:
        return _parse_latex_or_plain(spans[-1])
    return _parse(response)


def math_score(response: str, answer: Optional[str]) -> float:
    """1.0 if the response's final answer verifies against `answer`, else 0.0; raises without a gold."""
    if answer is None or not str(answer).strip():
        raise ValueError("math reward needs a gold answer: the sample has none (check data.answer_key)")
    gold = list(_gold(str(answer)))
    pred = extract_answer(response)
    if not pred:
        return 0.0
    return 1.0 if _math_verify().verify(gold, pred, timeout_seconds=None) else 0.0


class MathReward:
    """Source `math`: 1.0 for a verified final answer, else 0.0 (see the module docstring)."""

    name = "math"

    def __call__(self, inp: RewardInput) -> float:
        return math_score(inp.response, inp.answer)

    def warmup(self) -> None:
        """Import math-verify and build its parsers (the runner calls this when a worker starts)."""
        math_score("\\boxed{\\frac{1}{2}}", "0.5")

    @classmethod
    def from_source(cls, source: Any, key: str) -> "MathReward":
        import importlib.util

        from megatron_rl.config.errors import ConfigError

        if importlib.util.find_spec("math_verify") is None:
            raise ConfigError(f"{key}.type: 'math' needs the math-verify package: pip install 'math-verify>=0.8'")
        return cls()
