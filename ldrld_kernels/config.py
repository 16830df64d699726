"""The scalar settings of one LDRLD call, shared by every backend: ``LossConfig`` validates
its own fields, so that a bad setting fails where it is made (``LDRLDLoss(k=0)`` at
construction), and carries them to the backends and the custom op."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, fields
from typing import Literal

from ldrld_kernels.validation import (
    MAX_K,
    RANK_BY,
    check_choice,
    check_int,
    check_k,
    check_real,
)


@dataclass(frozen=True)
class LossConfig:
    """``ldrld_loss``'s keywords that define the loss (see its docstring). Numbers are stored
    as ``int`` / ``float``; ``k`` is checked against C by the call, which knows C."""

    k: int = 7
    temperature: float = 4.0
    alpha: float = 1.0
    beta: float = 1.0
    ce_weight: float = 1.0
    adw_scale: float = 2.0
    adw_decay: float = 0.05
    adw_offset: float = 1.5
    rank_by: Literal["student", "teacher"] = "student"
    ignore_index: int = -100

    def __post_init__(self) -> None:
        check_int("k", self.k)
        check_k(self.k, None)
        if self.k > MAX_K:
            raise ValueError(f"ldrld_loss: k must be <= {MAX_K}, got k={self.k}")
        check_real("temperature", self.temperature, positive=True)
        for name in ("alpha", "beta", "ce_weight", "adw_scale", "adw_decay", "adw_offset"):
            check_real(name, getattr(self, name))
        check_choice("rank_by", self.rank_by, RANK_BY)
        check_int("ignore_index", self.ignore_index)
        for field in fields(self):  # plain Python numbers (e.g. from numpy or a tensor's item)
            value = getattr(self, field.name)
            if field.type in ("int", "float"):
                object.__setattr__(self, field.name, int(value) if field.type == "int"
                                   else float(value))

    @property
    def num_groups(self) -> int:
        """The local term averages over the k(k-1)/2 pairs and the top-k group."""
        return self.k * (self.k - 1) // 2 + 1

    def numbers(self) -> LossNumbers:
        """The numeric settings (every int and float field, in order), as the kernels take
        them (``settings.temperature``)."""
        return LossNumbers(*(getattr(self, name) for name in LossNumbers._fields))

    def op_args(self) -> tuple:
        """The settings as the custom op ``ops.ldrld_rows`` takes them (scalars only)."""
        return (self.k, self.temperature, self.alpha, self.beta, self.ce_weight,
                self.adw_scale, self.adw_decay, self.adw_offset, self.rank_by == "teacher",
                self.ignore_index)

    @classmethod
    def from_op_args(cls, k, temperature, alpha, beta, ce_weight, adw_scale, adw_decay,
                     adw_offset, rank_by_teacher, ignore_index) -> LossConfig:
        return cls(k, temperature, alpha, beta, ce_weight, adw_scale, adw_decay, adw_offset,
                   "teacher" if rank_by_teacher else "student", ignore_index)


# The numeric fields of LossConfig, by name: a new one reaches the kernels with no other change
LossNumbers = namedtuple("LossNumbers", [field.name for field in fields(LossConfig)
                                         if field.type in ("int", "float")])
