"""Language-consistency reward (source type `language`), after DeepSeek-R1.

R1 added a reward equal to the share of the chain of thought written in the target language, to stop
the model mixing languages. This is a deliberately simple version that tells scripts apart, which is
what mixing usually is (Chinese creeping into an English CoT or the reverse):

- text scored: the think span (`<think>...</think>`; up to `</think>` when the prompt ends with
  `<think>`), or the whole response when there is none;
- LaTeX (`$...$`, `\\[...\\]`, `\\(...\\)`, `\\command`), tags (`<...>`), digits and punctuation are
  dropped;
- tokens: each CJK character (Han, kana, Hangul) is one token; every other run of letters is one
  token, Latin when all its letters are Latin (ASCII letters, Latin-1 and Latin Extended-A/B), else
  "other" (Cyrillic, Greek, Arabic, ... count against both targets);
- score = tokens in the target script / all tokens, in [0, 1]; 0.0 when the text has no tokens.

The target is, first found: the sample's `metadata["language"]`, the source's `language` option,
the prompt's dominant script (Latin or CJK, by the same token count). A language is a script name
(`latin`, `cjk`), an ISO code (`en`, `fr`, `zh`, `zh-CN`, `ja`, `ko`, ...) or an English name
(`english`, `chinese`, ...). Note that a chat template's English system prompt counts towards the
prompt's script: set the language explicitly for non-English data with an English system prompt.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from .base import RewardInput

LATIN, CJK = "latin", "cjk"

_CJK_CHARS = (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u2e80-\u2fdf"  # CJK radicals
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f\u3130-\u318f"  # Bopomofo, Hangul compatibility Jamo
    "\u3400-\u4dbf\u4e00-\u9fff"  # CJK unified ideographs (+ extension A)
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0002ffff"  # extensions B-F
)
_CJK_CHAR = re.compile(f"[{_CJK_CHARS}]")
_TOKEN = re.compile(f"[{_CJK_CHARS}]|(?:(?![{_CJK_CHARS}])[^\\W\\d_])+")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]+")
_NOISE = re.compile(
    r"\$\$.*?\$\$|\$[^$]*\$|\\\[.*?\\\]|\\\(.*?\\\)"  # LaTeX math
    r"|\\[A-Za-z]+"  # LaTeX commands
    r"|<\|[^|>]*\|>|</?[A-Za-z_][^<>]{0,40}>",  # special tokens and tags
    re.DOTALL,
)

_LANGUAGES = {
    LATIN: ("latin", "en", "english", "fr", "french", "de", "german", "es", "spanish", "it", "italian",
            "pt", "portuguese", "nl", "dutch", "id", "indonesian", "ms", "malay", "vi", "vietnamese",
            "tr", "turkish", "pl", "polish", "cs", "czech", "sv", "swedish", "da", "danish", "no",
            "norwegian", "fi", "finnish", "ro", "romanian", "hu", "hungarian", "ca", "catalan"),
    CJK: ("cjk", "zh", "chinese", "mandarin", "cantonese", "ja", "japanese", "ko", "korean"),
}
_SCRIPT_OF = {name: script for script, names in _LANGUAGES.items() for name in names}


def script_of(language: str) -> str:
    """'en' / 'English' / 'latin' -> 'latin'; 'zh-CN' / 'ja' / 'cjk' -> 'cjk'; else ValueError."""
    norm = str(language).strip().lower()
    script = _SCRIPT_OF.get(norm) or _SCRIPT_OF.get(re.split(r"[-_]", norm)[0])
    if script is None:
        raise ValueError(
            f"language reward: unknown language {language!r}: use latin, cjk or a code such as en, fr, zh, ja, ko"
        )
    return script


def count_tokens(text: str) -> dict[str, int]:
    """Word-like tokens of `text` by script: {'latin': n, 'cjk': n, 'other': n}."""
    counts = {LATIN: 0, CJK: 0, "other": 0}
    for token in _TOKEN.findall(_NOISE.sub(" ", text)):
        if _CJK_CHAR.fullmatch(token):
            counts[CJK] += 1
        elif _LATIN_WORD.fullmatch(token):
            counts[LATIN] += 1
        else:
            counts["other"] += 1
    return counts


def dominant_script(text: str) -> str:
    """Latin or CJK, whichever has more tokens in `text` (Latin on a tie or no tokens)."""
    counts = count_tokens(text)
    return CJK if counts[CJK] > counts[LATIN] else LATIN


def think_span(prompt: str, response: str) -> str:
    """The chain of thought: inside <think>...</think>, else the whole response."""
    close = response.find("</think>")
    if close < 0:
        return response
    head = response[:close]
    open_ = head.find("<think>")
    if open_ >= 0:
        return head[open_ + len("<think>"):]
    return head if prompt.rstrip().endswith("<think>") else response


def language_score(text: str, script: str) -> float:
    counts = count_tokens(text)
    total = sum(counts.values())
    return counts[script] / total if total else 0.0


class LanguageReward:
    """Source `language`: share of the CoT's word-like tokens in the target script."""

    name = "language"

    def __init__(self, language: Optional[str] = None):
        self.language = language
        self.script = script_of(language) if language is not None else None

    def __call__(self, inp: RewardInput) -> float:
        wanted = (inp.metadata or {}).get("language")
        if wanted:
            script = script_of(wanted)
        else:
            script = self.script or dominant_script(inp.prompt)
        return language_score(think_span(inp.prompt, inp.response), script)

    @classmethod
    def from_source(cls, source: Any, key: str) -> "LanguageReward":
        from megatron_rl.config.errors import ConfigError

        language = getattr(source, "language", None)
        try:
            return cls(language)
        except ValueError as exc:
            raise ConfigError(f"{key}.language: {exc}") from None
