"""Format reward (source type `format`): 1.0 when the response has the R1 layout, else 0.0.

The default layout is DeepSeek-R1's: `<think>reasoning</think>` then `<answer>answer</answer>`,
whitespace allowed around and between them, nothing else, each of the four tags exactly once.

Chat templates of reasoning models (Qwen3, the R1 distills) often end the prompt with `<think>`, so
the model's response starts inside the think block; when the prompt (stripped) ends with `<think>`
the response is checked as `<think>` + response.

A custom layout is a Python regex that must match the whole response (`re.fullmatch`, DOTALL), given
as `FormatReward(pattern=...)` or, once the schema has it, `reward.sources[i].pattern`.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from .base import RewardInput

R1_PATTERN = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"
_R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


class FormatReward:
    """Source `format`: 1.0 when the response matches the layout, else 0.0."""

    name = "format"

    def __init__(self, pattern: Optional[str] = None):
        self.pattern = pattern
        self._regex = re.compile(pattern if pattern is not None else R1_PATTERN, re.DOTALL)

    def __getstate__(self):
        return {"pattern": self.pattern}

    def __setstate__(self, state):
        self.__init__(state["pattern"])

    def __call__(self, inp: RewardInput) -> float:
        text = inp.response
        if inp.prompt.rstrip().endswith("<think>") and not text.lstrip().startswith("<think>"):
            text = "<think>" + text
        if self._regex.fullmatch(text) is None:
            return 0.0
        if self.pattern is None and any(text.count(tag) != 1 for tag in _R1_TAGS):
            return 0.0
        return 1.0

    @classmethod
    def from_source(cls, source: Any, key: str) -> "FormatReward":
        from megatron_rl.config.errors import ConfigError

        pattern = getattr(source, "pattern", None)
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{key}.pattern: {pattern!r} is not a valid regex ({exc}): fix the pattern") from None
        return cls(pattern)
