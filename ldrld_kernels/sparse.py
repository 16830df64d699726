"""A teacher saved offline: per row its top-K classes and their log-probabilities.

The teacher runs once over the corpus and keeps, per row, ``ids`` (K distinct classes) and
``logprobs`` (their log-probabilities at temperature 1, entries of a normalized distribution,
so their exponentials sum to at most 1). The loss needs the teacher's whole row; it is
completed by spreading the missing mass m = 1 - sum(exp(logprobs)), clamped from below at
float32's smallest normal number, uniformly over the C - K unlisted classes: each gets the
log-probability ``log(m / (C - K))``. That is the maximum-entropy completion: it assumes
nothing about the unlisted classes but their total, it is defined for every ranking and
every k, and with K = C it is the dense teacher itself. The loss is then exactly LDRLD
against the completed row (``reference.densify`` builds it; no fast path does).

``SparseTeacher(ids, logprobs)`` goes wherever a teacher's logits go: ``ldrld_loss``,
``LDRLDLoss`` and ``ldrld_fused_linear_loss`` (in place of the teacher's hidden states and
output layer), with or without ``process_group`` (every rank passes the same global ids).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

# the smallest missing mass: every completed log-probability stays finite
TINY = torch.finfo(torch.float32).tiny


class SparseTeacher(NamedTuple):
    """A teacher row as its top-K: ``ids`` ``(..., K)`` int64, distinct classes in [0, C);
    ``logprobs`` ``(..., K)`` float, their log-probabilities at temperature 1 (data: no
    gradient). The leading shape is the student's; K >= k."""

    ids: torch.Tensor
    logprobs: torch.Tensor

    def rows(self, count: int) -> SparseTeacher:
        """Its ``count`` rows as ``(count, K)`` tensors (views where the layout allows)."""
        listed = self.ids.shape[-1]
        return SparseTeacher(self.ids.reshape(count, listed),
                             self.logprobs.reshape(count, listed))

    @classmethod
    def from_logits(cls, teacher_logits: torch.Tensor, num_listed: int) -> SparseTeacher:
        """The top ``num_listed`` classes of ``teacher_logits`` ``(..., C)`` and their
        log-probabilities (float32, or float64 for float64 logits), ties to the smaller class:
        what a teacher run saves, or a caller that computes the top-K online to save memory."""
        dtype = torch.promote_types(teacher_logits.dtype, torch.float32)
        logprobs = torch.log_softmax(teacher_logits.detach().to(dtype), dim=-1)
        values, ids = torch.topk(logprobs, num_listed, dim=-1, sorted=True)
        # torch.topk's order among equal values is unspecified: ties to the smaller class
        order = torch.sort(ids, dim=-1).indices
        ids, values = ids.gather(-1, order), values.gather(-1, order)
        order = torch.sort(values, dim=-1, descending=True, stable=True).indices
        return cls(ids.gather(-1, order), values.gather(-1, order))

    @classmethod
    def from_distillkit(cls, signal: Any = None, *, sparse_ids: torch.Tensor | None = None,
                        sparse_values: torch.Tensor | None = None,
                        log_values: bool | None = None, generation_temperature: float = 1.0,
                        logsumexp: torch.Tensor | None = None) -> SparseTeacher:
        """DistillKit's sparse signal (``SparseSignal``: ``sparse_ids``, ``sparse_values``,
        ``log_values``, ``generation_temperature``; its fields may be given instead).

        Convertible: log-probabilities (``log_values=True``) sampled at temperature 1; raw
        logits (``log_values=False``) only with the row's log-sum-exp over the whole
        vocabulary at temperature 1 (``logsumexp``, ``(...)``), which the K logits cannot
        give. Log-probabilities sampled at another temperature are not convertible either:
        returning to temperature 1 needs the unlisted classes too."""
        if signal is not None:
            sparse_ids = signal.sparse_ids
            sparse_values = signal.sparse_values
            log_values = signal.log_values
            generation_temperature = getattr(signal, "generation_temperature",
                                             generation_temperature)
        if sparse_ids is None or sparse_values is None or log_values is None:
            raise TypeError("SparseTeacher.from_distillkit: give a SparseSignal or its "
                            "sparse_ids, sparse_values and log_values")
        if not math.isclose(float(generation_temperature), 1.0):
            raise ValueError("SparseTeacher.from_distillkit: values sampled at "
                             f"generation_temperature={generation_temperature} are not "
                             "convertible to log-probabilities at temperature 1 (that needs "
                             "the whole vocabulary's logits); sample the teacher at 1")
        if log_values:
            return cls(sparse_ids, sparse_values)
        if logsumexp is None:
            raise ValueError("SparseTeacher.from_distillkit: raw logits (log_values=False) "
                             "need the row's log-sum-exp over the whole vocabulary "
                             "(logsumexp=, shape (...)); the K logits alone do not give it")
        return cls(sparse_ids, sparse_values - logsumexp[..., None].to(sparse_values.dtype))


def tail_logprob(logprobs: torch.Tensor, num_classes: int | torch.Tensor) -> torch.Tensor:
    """The log-probability of each unlisted class, ``(...)`` float64: log(m / (C - K)) with
    m = max(1 - sum(exp(logprobs)), TINY), summed in float64 (a float32 sum of K terms would
    lose the small masses that decide the unlisted classes' share at a temperature above 1);
    -inf when every class is listed."""
    listed = logprobs.shape[-1]
    mass = (1.0 - logprobs.to(torch.float64).exp().sum(dim=-1)).clamp_min(TINY)
    unlisted = num_classes - listed
    if isinstance(unlisted, torch.Tensor):
        return torch.where(unlisted > 0, torch.log(mass / unlisted.clamp_min(1)), -math.inf)
    return torch.log(mass / unlisted) if unlisted > 0 else torch.full_like(mass, -math.inf)
