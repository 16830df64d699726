"""The LDRLD loss written out group by group: the oracle every fast path is tested against.

It follows the definition step by step (the numbered comments below: ranking, dense pairs
with their Adaptive Decay Weights, the top-k group, the remaining classes, cross-entropy)
and, like the authors' released code, computes every group (each of the k(k-1)/2 dense
pairs, the top-k group and the remaining classes) as its own softmax over the full row with
the classes outside the group masked out. That makes it slow and memory-hungry on purpose:
it is also the "released-code style" baseline of the benchmarks. Gradients come from
autograd. Run it in float64 for exact answers.

A teacher saved offline as its top-K (``ldrld_kernels.SparseTeacher``) is completed to a
dense row by ``densify``, the maximum-entropy completion: the missing mass spread uniformly
over the unlisted classes; the loss is then ``ldrld_loss`` against the dense row.

Plain PyTorch only; it checks nothing that the public API validates. Import it as
``from ldrld_kernels import reference``; ``reference.ldrld_loss`` takes the arguments of
``ldrld_kernels.ldrld_loss`` except ``backend``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class ReferenceOutput(NamedTuple):
    loss: torch.Tensor
    ce: torch.Tensor
    local: torch.Tensor
    rntk: torch.Tensor


def _masked_kl(teacher: torch.Tensor, student: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher[group]) || softmax(student[group])) per row, over full-width rows.

    ``teacher`` and ``student`` are already divided by the temperature; ``group`` is a boolean
    mask of the same shape. Classes outside the group, and classes of zero teacher probability
    (``-inf`` logits), contribute exactly 0 to the value and to the gradients.
    """
    log_p = F.log_softmax(teacher.masked_fill(~group, -math.inf), dim=-1)
    log_q = F.log_softmax(student.masked_fill(~group, -math.inf), dim=-1)
    counts = group & (log_p > -math.inf)
    # Mask the log-ratio itself (not only the product) so that no NaN reaches autograd.
    log_ratio = torch.where(counts, log_p - log_q, torch.zeros_like(log_p))
    return (log_p.exp() * log_ratio).sum(dim=-1)


def ldrld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    k: int = 7,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    ce_weight: float = 1.0,
    adw_scale: float = 2.0,
    adw_decay: float = 0.05,
    adw_offset: float = 1.5,
    rank_by: str = "student",
    ignore_index: int = -100,
    reduction: str = "mean",
    return_parts: bool = False,
) -> torch.Tensor | ReferenceOutput:
    """LDRLD loss of ``student_logits`` against ``teacher_logits``, both ``(..., C)``.

    Same arguments and result as ``ldrld_kernels.ldrld_loss`` (without ``backend``).
    Computes in float64 for float64 inputs, else in float32.
    """
    lead, num_classes = student_logits.shape[:-1], student_logits.shape[-1]
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype),
                                torch.float32)
    T = float(temperature)
    s = student_logits.reshape(-1, num_classes).to(dtype)
    t = teacher_logits.reshape(-1, num_classes).to(dtype)
    rows = s.shape[0]

    # 1. Ranking: stable descending sort, ties to the smaller class index; no gradient. It
    # ranks the logits themselves (dividing by T first could round distinct values together).
    ranking = s if rank_by == "student" else t
    top = torch.sort(ranking.detach(), dim=-1, descending=True, stable=True).indices[:, :k]
    s, t = s / T, t / T

    def mask_of(classes: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(s, dtype=torch.bool).scatter_(1, classes, True)

    # 2-5. Dense pairs weighted by ADW, then the top-k group with weight 1.
    local = torch.zeros(rows, dtype=dtype, device=s.device)
    for i in range(k):
        for j in range(i + 1, k):
            rank_i, rank_j = i + 1, j + 1
            weight = (adw_scale * math.exp(-adw_decay * (rank_i + rank_j))
                      / (adw_offset + abs(rank_i - rank_j)))
            local = local + weight * _masked_kl(t, s, mask_of(top[:, [i, j]]))
    top_group = mask_of(top)
    local = local + _masked_kl(t, s, top_group)
    local = T**2 * local / (k * (k - 1) // 2 + 1)

    # 6. Remaining non-target knowledge over the other C - k classes.
    rntk = T**2 * _masked_kl(t, s, ~top_group)

    # 7. Cross-entropy at temperature 1 and the rows that count.
    if target is None:
        counted = torch.ones(rows, dtype=torch.bool, device=s.device)
        ce = torch.zeros(rows, dtype=dtype, device=s.device)
    else:
        flat_target = target.reshape(-1)
        counted = flat_target != ignore_index
        ce = F.cross_entropy(s * T, flat_target, reduction="none", ignore_index=ignore_index)

    def reduce(per_row: torch.Tensor) -> torch.Tensor:
        per_row = torch.where(counted, per_row, torch.zeros_like(per_row))
        if reduction == "none":
            return per_row.reshape(lead)
        if reduction == "sum":
            return per_row.sum()
        return per_row.sum() / counted.sum().clamp_min(1)

    loss = reduce(ce_weight * ce + alpha * local + beta * rntk)
    if not return_parts:
        return loss
    return ReferenceOutput(loss, reduce(ce).detach(), reduce(local).detach(),
                           reduce(rntk).detach())


def densify(ids: torch.Tensor, logprobs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The teacher's full log-probabilities at temperature 1, ``(..., num_classes)`` float64,
    from its top-K ``ids`` and ``logprobs`` ``(..., K)``: listed classes keep their own; the
    missing mass m = 1 - sum(exp(logprobs)), at least float32's smallest normal number, is
    spread uniformly over the C - K unlisted classes, each log(m / (C - K)). Log-probabilities
    are logits of the same distribution, so this is a teacher row for ``ldrld_loss``."""
    logprobs = logprobs.to(torch.float64)
    listed = logprobs.shape[-1]
    mass = (1.0 - logprobs.exp().sum(dim=-1, keepdim=True)).clamp_min(
        torch.finfo(torch.float32).tiny)
    tail = torch.log(mass / max(num_classes - listed, 1))
    dense = tail.expand(*logprobs.shape[:-1], num_classes).clone()
    return dense.scatter_(-1, ids, logprobs)
