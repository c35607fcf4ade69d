"""Prompt data: tokenizer loading, prompt datasets, the resumable sampler, the demo's synthetic task.

`datasets`, `transformers`, `tokenizers` and `pyarrow` are imported inside the functions that need
them, so importing this package is cheap.
"""
from .prompts import DataError, PromptDataset, PromptItem, load_tokenizer, render_prompt
from .sampler import PromptSampler
from .synthetic import (
    CHAT_TEMPLATE,
    VOCAB_SIZE,
    build_char_tokenizer,
    make_arithmetic_dataset,
    make_char_tokenizer,
    prepare_demo_data,
    digit_credit,
    reward_exact_match,
)

__all__ = [
    "DataError",
    "PromptDataset",
    "PromptItem",
    "PromptSampler",
    "load_tokenizer",
    "render_prompt",
    "CHAT_TEMPLATE",
    "VOCAB_SIZE",
    "build_char_tokenizer",
    "make_arithmetic_dataset",
    "make_char_tokenizer",
    "prepare_demo_data",
    "digit_credit",
    "reward_exact_match",
]
