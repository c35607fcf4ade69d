"""Rollout engines: the protocol, the embedded engine (in-process transformers), SGLang (later)."""
from .embedded import EmbeddedEngine
from .types import RolloutBatch, RolloutEngine, Sample, SamplingParams

__all__ = ["EmbeddedEngine", "RolloutBatch", "RolloutEngine", "Sample", "SamplingParams"]
