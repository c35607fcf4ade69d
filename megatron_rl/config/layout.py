"""Which global ranks form which parallel groups, in Megatron's default order tp-cp-dp-pp.

    rank = tp_rank + tp * (cp_rank + cp * (dp_rank + dp * pp_rank))

Tensor-parallel ranks are adjacent (one node's NVLink domain), pipeline stages are farthest apart.
Pure arithmetic: no torch, no megatron; used by `validate` to show a layout before any GPU is touched.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

DIMS = ("tp", "cp", "dp", "pp")  # fastest-varying first


@dataclass(frozen=True)
class RankLayout:
    world_size: int
    tp: int = 1
    pp: int = 1
    cp: int = 1

    def __post_init__(self):
        mp = self.tp * self.pp * self.cp
        if min(self.tp, self.pp, self.cp, self.world_size) < 1 or self.world_size % mp:
            raise ConfigError(
                f"world size {self.world_size} is not divisible by tensor*pipeline*context = {mp}"
            )

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp * self.cp)

    def sizes(self) -> dict[str, int]:
        return {"tp": self.tp, "cp": self.cp, "dp": self.dp, "pp": self.pp}

    def rank(self, tp: int = 0, cp: int = 0, dp: int = 0, pp: int = 0) -> int:
        return tp + self.tp * (cp + self.cp * (dp + self.dp * pp))

    def coords(self, rank: int) -> dict[str, int]:
        out = {}
        for dim in DIMS:
            size = self.sizes()[dim]
            out[dim] = rank % size
            rank //= size
        return out

    def group_of(self, dim: str, rank: int = 0) -> list[int]:
        """The ranks that differ from `rank` only along `dim` ('tp', 'cp', 'dp' or 'pp')."""
        base = self.coords(rank)
        return [self.rank(**{**base, dim: i}) for i in range(self.sizes()[dim])]

    def groups(self, dim: str) -> list[list[int]]:
        """All groups along `dim`, ordered by their first rank."""
        seen, out = set(), []
        for r in range(self.world_size):
            if r not in seen:
                group = self.group_of(dim, r)
                seen.update(group)
                out.append(group)
        return out
