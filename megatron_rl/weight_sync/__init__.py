"""Weight transports from the trainer's shards to the rollout engines (one file per transport)."""
from .in_process import InProcessWeightSync

__all__ = ["InProcessWeightSync"]
