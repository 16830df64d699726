"""The options of an LDRLD call, each defined once: their names, their defaults and their
checks. ``LossConfig`` holds the settings that define the loss (and reach every backend, the
custom op and the kernels mechanically, field by field); ``CallOptions`` the rest of a call's
keywords. Both validate their fields, so that a bad setting fails where it is made
(``LDRLDLoss(k=0)`` at construction). The public signatures spell the keywords out, typed,
with these defaults (``tests/test_config.py`` holds them equal)."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, get_args

from ldrld_kernels.validation import MAX_K, check_choice, check_int, check_k, check_real

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

Reduction = Literal["mean", "sum", "none"]
RankBy = Literal["student", "teacher"]
# "auto": the Triton kernels for CUDA tensors where they run, else the PyTorch path
Backend = Literal["auto", "torch", "triton"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
RANK_BY: tuple[str, ...] = get_args(RankBy)
BACKENDS: tuple[str, ...] = get_args(Backend)


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
    rank_by: RankBy = "student"
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

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> LossConfig:
        """The config of a call's keywords (a public function's ``locals()``)."""
        return cls(**{name: keywords[name] for name in LOSS_FIELDS})

    @property
    def num_groups(self) -> int:
        """The local term averages over the k(k-1)/2 pairs and the top-k group."""
        return self.k * (self.k - 1) // 2 + 1

    def values(self) -> tuple:
        """Every field, in order: what the custom op ``ops.ldrld_rows`` takes (its schema is
        made from the fields, ``ops.SETTINGS``)."""
        return tuple(getattr(self, name) for name in LOSS_FIELDS)

    def numbers(self) -> LossNumbers:
        """The numeric settings (every int and float field, in order), as the kernels take
        them (``settings.temperature``)."""
        return LossNumbers(*(getattr(self, name) for name in NUMBER_FIELDS))


# LossConfig's fields by name (``torch.compile`` traces no ``dataclasses.fields``), and its
# numeric ones: a new one reaches the kernels with no other change
LOSS_FIELDS = tuple(field.name for field in fields(LossConfig))
NUMBER_FIELDS = tuple(field.name for field in fields(LossConfig)
                      if field.type in ("int", "float"))
# (mypy takes only literal field names: it sees no field of this one)
LossNumbers = namedtuple("LossNumbers", NUMBER_FIELDS)  # type: ignore[misc]


@dataclass(frozen=True)
class CallOptions:
    """``ldrld_loss``'s keywords that say how the loss is computed and returned, not what it
    is (see its docstring)."""

    reduction: Reduction = "mean"
    backend: Backend = "auto"
    return_parts: bool = False
    process_group: ProcessGroup | None = None

    def __post_init__(self) -> None:
        check_choice("reduction", self.reduction, REDUCTIONS)
        check_choice("backend", self.backend, BACKENDS)

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> CallOptions:
        """The options of a call's keywords (a public function's ``locals()``)."""
        return cls(**{name: keywords[name] for name in CALL_FIELDS})


CALL_FIELDS = tuple(field.name for field in fields(CallOptions))
