"""The scalar settings of one LDRLD call, shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossConfig:
    k: int = 7
    temperature: float = 4.0
    alpha: float = 1.0
    beta: float = 1.0
    ce_weight: float = 1.0
    adw_scale: float = 2.0
    adw_decay: float = 0.05
    adw_offset: float = 1.5
    rank_by: str = "student"
    ignore_index: int = -100

    @property
    def num_groups(self) -> int:
        """The local term averages over the k(k-1)/2 pairs and the top-k group."""
        return self.k * (self.k - 1) // 2 + 1
