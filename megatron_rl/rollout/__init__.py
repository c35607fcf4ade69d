"""Rollout engines: the protocol, the embedded engine (in-process transformers), SGLang servers.

The SGLang pieces are imported on first use (they need httpx), so the package imports without them.
"""
from .embedded import EmbeddedEngine
from .types import RolloutBatch, RolloutEngine, Sample, SamplingParams

_LAZY = {
    "SGLangEngine": "sglang_engine",
    "SGLangClient": "sglang_client",
    "AsyncSGLangClient": "sglang_client",
    "SGLangError": "sglang_client",
    "SGLangStaleWeightsError": "sglang_client",
    "build_rollout_engine": "factory",
    "SGLangServers": "sglang_launch",
    "SGLangLaunchError": "sglang_launch",
}

__all__ = ["EmbeddedEngine", "RolloutBatch", "RolloutEngine", "Sample", "SamplingParams", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
