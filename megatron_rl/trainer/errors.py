"""Failures that must reach every rank: a rank-0-only phase (data, rollout, rewards) that fails
would otherwise leave the other ranks waiting in their next collective until the timeout."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch.distributed as dist

T = TypeVar("T")


class PeerFailed(RuntimeError):
    """Raised on the ranks other than 0 when rank 0 failed (rank 0 raises and reports the cause)."""


def from_rank0(fn: Callable[[], T]) -> T:
    """Run fn on rank 0 and hand its result to every rank; if it raises, rank 0 re-raises the error
    and the others raise PeerFailed, instead of hanging in a collective."""
    box: list = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the peers
            error, box[0] = exc, ("error", f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        if error is not None:
            raise error
        raise PeerFailed(f"rank 0 failed: {value}")
    return value
