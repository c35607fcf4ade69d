"""Failures that must reach every rank: a rank-0-only phase (data, rollout, rewards) that fails
would otherwise leave the other ranks waiting in their next collective until the timeout."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch.distributed as dist

T = TypeVar("T")


# rank 0 failures that are the user's input (the CLI exits 2 for them, with one line)
BAD_INPUT_ERRORS = ("ConfigError", "CheckpointError")


class PeerFailed(RuntimeError):
    """Raised on the ranks other than 0 when rank 0 failed (rank 0 raises and reports the cause).
    `bad_input`: rank 0's error was a bad input, so these ranks exit as rank 0 does (2): whichever
    rank torchrun sees fail first then gives the same exit code."""

    def __init__(self, message: str, bad_input: bool = False):
        super().__init__(message)
        self.bad_input = bad_input


def from_rank0(fn: Callable[[], T]) -> T:
    """Run fn on rank 0 and hand its result to every rank; if it raises, rank 0 re-raises the error
    and the others raise PeerFailed, instead of hanging in a collective."""
    box: list = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the peers
            bad_input = any(cls.__name__ in BAD_INPUT_ERRORS for cls in type(exc).__mro__)
            error, box[0] = exc, ("error", (f"{type(exc).__name__}: {exc}", bad_input))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        if error is not None:
            raise error
        raise PeerFailed(f"rank 0 failed: {value[0]}", bad_input=value[1])
    return value
