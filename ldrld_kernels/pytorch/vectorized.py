"""Vectorized PyTorch path: the loss and its gradients in closed form, for any device.

Per row, with u = s / T and v = t / T (``reference`` states it group by group):
    local = T^2 (sum_{i<j} w_ij KL_ij + KL_top) / (k(k-1)/2 + 1)   on the top-k classes
    rntk  = T^2 KL(softmax(v_R) || softmax(u_R))                   on the other C - k classes
    row   = ce_weight * CE(s, y) + alpha * local + beta * rntk
A pair needs no softmax: with a = v_i - v_j, b = u_i - u_j,
    KL_ij = sig(a) (logsig(a) - logsig(b)) + sig(-a) (logsig(-a) - logsig(-b)).
Gradients, per group G with p = softmax(v_G), q = softmax(u_G):
    d(T^2 KL) / d s_c = T (q_c - p_c),   d(T^2 KL) / d t_c = T p_c (log(p_c / q_c) - KL),
so a pair gives T (sig(b) - sig(a)) to s_i and the opposite to s_j. All pairs are one
(rows, k, k) batch; the remaining classes are the row with the k selected ones set to -inf.
The gradients are computed in the forward pass, like the fused kernel does.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ldrld_kernels.adw import adw_weights
from ldrld_kernels.config import LossConfig
from ldrld_kernels.pytorch import parallel
from ldrld_kernels.pytorch.selection import top_k_indices


def gradient_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every rows function stores a gradient of ``dtype`` logits in: float32 for
    float16, whose range cannot hold d loss / d logit before the upstream gradient arrives
    ((q - p) / N underflows below float16's smallest subnormal; the caller multiplies by the
    upstream gradient, then casts, as PyTorch's autocast cross-entropy does); else ``dtype``.
    """
    return torch.float32 if dtype == torch.float16 else dtype


@functools.lru_cache(maxsize=64)
def _pair_weights(k, adw_scale, adw_decay, adw_offset, dtype, device) -> torch.Tensor:
    """``adw_weights``, built once per setting (no host-to-device copy per call)."""
    return adw_weights(k, adw_scale, adw_decay, adw_offset, dtype=dtype, device=device)


def _local_columns(classes: torch.Tensor, shard: parallel.Shard) -> torch.Tensor:
    """Global classes as columns of this rank's slice, the extra last column for classes
    held elsewhere."""
    local = classes - shard.offset
    inside = (local >= 0) & (local < shard.local_classes)
    return torch.where(inside, local, shard.local_classes)


def _maxima_and_sums(rows: list[torch.Tensor], shard: parallel.Shard
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of each (rows, C) tensor, across the ranks of the shard: its maximum (0 for a
    row of -inf) and its sum of exp(x - maximum), with one all-reduce MAX and one all-reduce
    SUM for all of them; stacked, (len(rows), rows) each."""
    top = shard.all_reduce(torch.stack([x.amax(dim=-1) for x in rows]), dist.ReduceOp.MAX)
    top = torch.where(top == -math.inf, 0.0, top)  # (a row of -inf stays -inf, as locally)
    sums = shard.all_reduce(torch.stack([(x - m[:, None]).exp().sum(dim=-1)
                                         for x, m in zip(rows, top, strict=True)]),
                            dist.ReduceOp.SUM)
    return top, sums


def _log_softmax(rows: list[torch.Tensor], shard: parallel.Shard | None) -> list[torch.Tensor]:
    """``log_softmax`` of each (rows, C) tensor over its whole row (across the ranks of the
    shard)."""
    if shard is None:
        return [F.log_softmax(x, dim=-1) for x in rows]
    top, sums = _maxima_and_sums(rows, shard)
    return [x - m[:, None] - z.log()[:, None] for x, m, z in zip(rows, top, sums, strict=True)]


def log_normalizers(rows: list[torch.Tensor], shard: parallel.Shard | None
                    ) -> list[torch.Tensor]:
    """The log-sum-exp of each (rows, C) tensor over its whole row (across the ranks of the
    shard), (rows,) each."""
    if shard is None:
        return [torch.logsumexp(x, dim=-1) for x in rows]
    top, sums = _maxima_and_sums(rows, shard)
    return list(top + sums.log())


def local_term(u_top: torch.Tensor, v_top: torch.Tensor, config: LossConfig,
               need_student_grad: bool, need_teacher_grad: bool,
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The local term of each row from u = s / T and v = t / T at its top-k classes in rank
    order (rows, k), and the gradients of sum_i<j w_ij KL_ij + KL_top at them over T (the
    caller multiplies by alpha T / num_groups), each (rows, k) or None where not asked for."""
    # Dense pairs, all at once; the weights are 0 on and below the diagonal. Under
    # torch.compile the weights are traced as constants (Dynamo cannot trace a cache).
    weights_of = adw_weights if torch.compiler.is_compiling() else _pair_weights
    weights = weights_of(config.k, config.adw_scale, config.adw_decay, config.adw_offset,
                         dtype=u_top.dtype, device=u_top.device)
    a = v_top[:, :, None] - v_top[:, None, :]
    b = u_top[:, :, None] - u_top[:, None, :]
    p_pair = torch.sigmoid(a)
    log_ratio_i = F.logsigmoid(a) - F.logsigmoid(b)
    kl_pair = p_pair * log_ratio_i + torch.sigmoid(-a) * (F.logsigmoid(-a) - F.logsigmoid(-b))
    # Top-k group.
    log_p_top = F.log_softmax(v_top, dim=-1)
    log_q_top = F.log_softmax(u_top, dim=-1)
    p_top = log_p_top.exp()
    kl_top = (p_top * (log_p_top - log_q_top)).sum(dim=-1)
    T = config.temperature
    local = T**2 * ((weights * kl_pair).sum(dim=(1, 2)) + kl_top) / config.num_groups
    grad_s = grad_t = None
    if need_student_grad:
        pair = weights * (torch.sigmoid(b) - p_pair)
        grad_s = pair.sum(dim=2) - pair.sum(dim=1) + log_q_top.exp() - p_top
    if need_teacher_grad:
        pair = weights * p_pair * (log_ratio_i - kl_pair)
        grad_t = (pair.sum(dim=2) - pair.sum(dim=1)
                  + p_top * (log_p_top - log_q_top - kl_top[:, None]))
    return local, grad_s, grad_t


def ldrld_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    config: LossConfig,
    need_student_grad: bool,
    need_teacher_grad: bool,
    grad_scale: torch.Tensor | None = None,
    shard: parallel.Shard | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-row LDRLD of ``student`` and ``teacher`` logits, both (rows, C), any strides.

    Returns ``(row_loss, parts, student_grad, teacher_grad)``: the row losses (rows,), the
    unweighted ``(ce, local, rntk)`` of each row (rows, 3), and the gradients of the row loss
    with respect to each input, times ``grad_scale`` (a 0-d tensor, e.g. 1 / rows for a mean)
    when given, in ``gradient_dtype`` of the input's dtype, or None where not asked for. Rows
    whose target is ``ignore_index`` get zeros everywhere. Computes in float64 when either
    input is float64, else in float32. With a ``shard``, the logits are this rank's slice of
    the classes, and the row statistics are combined across ranks (``parallel``): every rank
    gets the same row losses and the gradients of its slice.
    """
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    rows = student.shape[0]
    k, T = config.k, config.temperature
    device = student.device
    # Rank the logits themselves: dividing by T first could round distinct values together.
    key = (student if config.rank_by == "student" else teacher).detach()
    u = student.detach().to(dtype) / T
    v = teacher.detach().to(dtype) / T
    s_all = None if target is None else student.detach().to(dtype)  # for the cross-entropy
    if shard is None:
        top = top_k_indices(key, k)
        u_top, v_top = u.gather(1, top), v.gather(1, top)
    else:
        top_global, s_top, t_top = parallel.global_top_k(key, student.detach(),
                                                         teacher.detach(), k, shard)
        u_top, v_top = s_top.to(dtype) / T, t_top.to(dtype) / T
        # one extra -inf column: where the selected classes and the target held elsewhere
        # point, dropped at the end
        u, v = (F.pad(x, (0, 1), value=-math.inf) for x in (u, v))
        if s_all is not None:
            s_all = F.pad(s_all, (0, 1), value=-math.inf)
        top = _local_columns(top_global, shard)

    local, grad_top_s, grad_top_t = local_term(u_top, v_top, config, need_student_grad,
                                               need_teacher_grad)

    # Remaining classes: the row with the selected ones set to -inf (u and v are our copies).
    rows_to_normalize = [u.scatter_(1, top, -math.inf), v.scatter_(1, top, -math.inf)]
    if s_all is not None:  # (a target)
        rows_to_normalize.append(s_all)
    log_q_rest, log_p_rest, *log_softmax_target = _log_softmax(rows_to_normalize, shard)
    p_rest = log_p_rest.exp()
    # Classes of zero teacher probability (masked, or -inf padding) contribute exactly 0.
    log_ratio_rest = torch.where(log_p_rest == -math.inf, 0.0, log_p_rest - log_q_rest)
    kl_rest = (p_rest * log_ratio_rest).sum(dim=-1)

    if target is None:
        counted = None
        ce = torch.zeros(rows, dtype=dtype, device=device)
    else:
        counted = target != config.ignore_index
        log_softmax_s = log_softmax_target[0]
        safe_target = torch.where(counted, target, 0)[:, None]
        if shard is not None:  # the target's column here, or the extra one
            safe_target = _local_columns(safe_target, shard)
        ce = -log_softmax_s.gather(1, safe_target)[:, 0]
        if shard is not None:  # (only the rank that holds the target adds its share)
            ce = torch.where(safe_target[:, 0] < shard.local_classes, ce, 0.0)
    if shard is not None:  # this rank's shares of KL_rest and of the cross-entropy
        kl_rest, ce = shard.all_reduce(torch.stack([kl_rest, ce]), dist.ReduceOp.SUM)
    rntk = T**2 * kl_rest

    parts = torch.stack([ce, local, rntk], dim=1)
    row_loss = config.ce_weight * ce + config.alpha * local + config.beta * rntk
    if counted is not None:
        parts = torch.where(counted[:, None], parts, 0.0)
        row_loss = torch.where(counted, row_loss, 0.0)

    # Gradient weights, with the caller's factor (1 / rows for a mean) folded in.
    scale = 1.0 if grad_scale is None else grad_scale
    local_scale = config.alpha * T / config.num_groups * scale
    rest_scale = config.beta * T * scale
    ce_scale = config.ce_weight * scale

    def finish(grad: torch.Tensor, grad_top: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        grad.scatter_add_(1, top, local_scale * grad_top)
        if counted is not None:
            grad = torch.where(counted[:, None], grad, 0.0)
        return grad[:, :like.shape[1]].to(gradient_dtype(like.dtype))

    student_grad = teacher_grad = None
    if need_student_grad:
        grad = rest_scale * (log_q_rest.exp() - p_rest)
        if counted is not None:
            grad += ce_scale * log_softmax_s.exp_()  # softmax(s); the log is used up
            grad.scatter_add_(1, safe_target, -ce_scale * torch.ones_like(ce[:, None]))
        assert grad_top_s is not None  # (local_term computes what is asked for)
        student_grad = finish(grad, grad_top_s, student)
    if need_teacher_grad:
        grad = rest_scale * p_rest * (log_ratio_rest - kl_rest[:, None])
        assert grad_top_t is not None
        teacher_grad = finish(grad, grad_top_t, teacher)
    return row_loss, parts, student_grad, teacher_grad
