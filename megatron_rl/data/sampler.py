"""An endless, resumable order over a prompt dataset.

    sampler = PromptSampler(len(train), shuffle=cfg.data.shuffle, seed=cfg.run.seed)
    idx = sampler.next_indices(k)        # k indices; crosses epochs; never stops
    state = sampler.state_dict()         # {"epoch", "position", "seed", "size", "shuffle"}
    sampler.load_state_dict(state)       # the same indices afterwards as without the interruption

Epoch e visits every index exactly once, in the order `permutation(seed, e)` (0..size-1 when
shuffle is off). A batch that runs past the end of an epoch takes the rest of the next epoch's order,
so no index repeats within an epoch and none is skipped. Every rank builds the same sampler and gets
the same indices; the trainer takes its data-parallel slice of each batch.

The permutation is an argsort of 64-bit words from numpy's PCG64 seeded by SeedSequence([seed,
epoch]): numpy guarantees BitGenerator streams across versions (it does not for `Generator`
methods such as `permutation`), so an order recorded in a checkpoint is the order a resumed run
sees after a library upgrade.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .prompts import DataError

STATE_KEYS = ("epoch", "position", "seed", "size")


def epoch_permutation(size: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of epoch `epoch`: int64 indices 0..size-1."""
    if not shuffle:
        return np.arange(size, dtype=np.int64)
    words = np.random.PCG64(np.random.SeedSequence([int(seed) & (2**63 - 1), int(epoch)])).random_raw(size)
    return np.argsort(words, kind="stable").astype(np.int64)


class PromptSampler:
    def __init__(self, size: int, shuffle: bool = True, seed: int = 0):
        if size < 1:
            raise DataError("the prompt dataset is empty: check data.train_path and data.max_prompt_len")
        self.size = int(size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0  # indices of this epoch already handed out
        self._order: Optional[np.ndarray] = None

    def _current_order(self) -> np.ndarray:
        if self._order is None:
            self._order = epoch_permutation(self.size, self.seed, self.epoch, self.shuffle)
        return self._order

    def next_indices(self, k: int) -> list[int]:
        """The next k dataset indices (k may exceed the dataset: it then spans several epochs)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        out: list[int] = []
        while len(out) < k:
            order = self._current_order()
            take = min(k - len(out), self.size - self.position)
            out.extend(order[self.position:self.position + take].tolist())
            self.position += take
            if self.position == self.size:
                self.epoch += 1
                self.position = 0
                self._order = None
        return out

    @property
    def consumed(self) -> int:
        """Indices handed out since the start (over all epochs)."""
        return self.epoch * self.size + self.position

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": self.size,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` left off: its seed and shuffle flag win over the ones given
        to the constructor (the order is the checkpoint's); its size must match this dataset."""
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise DataError(f"the checkpoint's sampler state lacks {', '.join(missing)}: it is not a "
                            "PromptSampler state (start a fresh run with checkpoint.resume=never)")
        if int(state["size"]) != self.size:
            raise DataError(f"the dataset changed: the checkpoint's sampler ran over {int(state['size'])} prompts, "
                            f"this dataset has {self.size} (after max_prompt_len filtering): restore "
                            "data.train_path / data.max_prompt_len or start a fresh run (checkpoint.resume=never)")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.size:
            raise DataError(f"the checkpoint's sampler state is corrupt (epoch {epoch}, position {position}, "
                            f"size {self.size}): start a fresh run (checkpoint.resume=never)")
        self.epoch, self.position = epoch, position
        self.seed = int(state["seed"])
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self._order = None

    def __repr__(self) -> str:
        return (f"PromptSampler(size={self.size}, shuffle={self.shuffle}, seed={self.seed}, "
                f"epoch={self.epoch}, position={self.position})")
