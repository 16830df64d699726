"""The PyTorch rows against a sparse teacher (``sparse.SparseTeacher``): the student's dense
row, the teacher's K listed classes and one tail value per row, never a dense teacher row.

With u = s / T, v_i = lp_i / T at the listed classes and v_tail = tail / T at the C - K
unlisted ones (``sparse.tail_logprob``):
- the top-k is the student's (``rank_by="student"``) or the completed teacher's: its best
  listed classes, then, where the tail ties or beats them, the smallest unlisted ids (ties to
  the smaller class, as the dense ranking); the local term is ``vectorized.local_term`` at
  the k classes (teacher values by membership);
- over the other classes R, n = the unlisted classes in R:
      log Zbar_v = logsumexp(v_i for listed i in R, v_tail + log n)
      KL_rest = sum_{listed i in R} pbar_i (log pbar_i - log qbar_i)
                + pbar_tail (n log pbar_tail - sum_{unlisted c in R} u_c + n log Zbar_u)
  with pbar = exp(v - log Zbar_v), log qbar = u - log Zbar_u (the student's log-softmax
  over R), so the unlisted classes cost one masked sum of u;
- the student's gradient over R is beta T (qbar - pbar): pbar_tail at the unlisted classes,
  pbar_i at the listed ones; the teacher gets none (its ids and log-probabilities are data).
With a ``shard`` the student is a rank's slice of the classes (``parallel``); every rank
holds the same ids and log-probabilities, so every teacher quantity is known everywhere and
only the student's sums cross the ranks.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ldrld_kernels.config import LossConfig
from ldrld_kernels.pytorch import parallel
from ldrld_kernels.pytorch.selection import top_k_indices
from ldrld_kernels.pytorch.vectorized import gradient_dtype, local_term, log_normalizers
from ldrld_kernels.sparse import SparseTeacher, tail_logprob


def smallest_unlisted(ids: torch.Tensor, count: int,
                      num_classes: int | torch.Tensor) -> torch.Tensor:
    """The ``count`` smallest class ids that ``ids`` (rows, K; distinct, in [0, C)) leaves
    out, increasing, ``num_classes`` past the last one: below sorted id s_i lie s_i - i
    unlisted ones, so the j-th unlisted id is j plus the listed ids below it."""
    ordered = ids.sort(dim=-1).values
    below = ordered - torch.arange(ids.shape[-1], device=ids.device)  # unlisted below s_i
    wanted = torch.arange(count, device=ids.device).expand(ids.shape[0], count).contiguous()
    found = wanted + torch.searchsorted(below.contiguous(), wanted, right=True)
    return torch.where(found < num_classes, found, num_classes)


def teacher_top_k(ids: torch.Tensor, logprobs: torch.Tensor, tail: torch.Tensor, k: int,
                  num_classes: int | torch.Tensor) -> torch.Tensor:
    """The completed teacher's top-k classes of each row in rank order, ties to the smaller
    class: among the listed classes and the k smallest unlisted ones (each at the tail)."""
    unlisted = smallest_unlisted(ids, k, num_classes)
    classes = torch.cat([ids, unlisted], dim=1)
    values = torch.cat([logprobs.to(tail.dtype),
                        torch.where(unlisted < num_classes, tail[:, None], -math.inf)], dim=1)
    by_class = classes.argsort(dim=1)  # (top_k_indices breaks ties by position)
    classes, values = classes.gather(1, by_class), values.gather(1, by_class)
    return classes.gather(1, top_k_indices(values, k))


def _membership(classes: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(rows, n, K): whether class ``classes[r, a]`` is ``ids[r, b]``."""
    return classes[:, :, None] == ids[:, None, :]


def ldrld_sparse_rows(
    student: torch.Tensor,
    teacher: SparseTeacher,
    target: torch.Tensor | None,
    config: LossConfig,
    need_student_grad: bool,
    need_teacher_grad: bool,
    grad_scale: torch.Tensor | None = None,
    shard: parallel.Shard | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, None]:
    """``vectorized.ldrld_rows``' contract with a sparse teacher: ``teacher`` holds ``ids``
    and ``logprobs`` (rows, K); the teacher's gradient is always None (it is data)."""
    ids, logprobs = teacher
    dtype = torch.promote_types(torch.promote_types(student.dtype, logprobs.dtype),
                                torch.float32)
    rows, width = student.shape
    k, T = config.k, config.temperature
    device = student.device
    num_classes = width if shard is None else shard.num_classes
    tail = tail_logprob(logprobs, num_classes).to(dtype)  # (rows,)
    s = student.detach().to(dtype)
    lp = logprobs.to(dtype)

    # The top-k and the values at it.
    if config.rank_by == "teacher":
        top = teacher_top_k(ids, lp, tail, k, num_classes)  # (the same on every rank)
        if shard is None:
            s_top = s.gather(1, top)
        else:
            s_top = shard.all_reduce(_owned(s, top, shard), dist.ReduceOp.SUM)
    elif shard is None:
        top = top_k_indices(student.detach(), k)
        s_top = s.gather(1, top)
    else:
        top, s_top, _ = parallel.global_top_k(student.detach(), student.detach(),
                                              student.detach(), k, shard)
        s_top = s_top.to(dtype)
    is_top = _membership(top, ids)  # (rows, k, K)
    listed_top = is_top.any(dim=2)  # (rows, k)
    t_top = torch.where(listed_top, torch.where(is_top, lp[:, None, :], 0.0).sum(dim=2),
                        tail[:, None])
    local, grad_top_s, _ = local_term(s_top / T, t_top / T, config, need_student_grad, False)

    # The remaining classes R: the listed ones, and n unlisted ones.
    listed_rest = ~is_top.any(dim=1)  # (rows, K)
    unlisted_rest = (num_classes - ids.shape[1]) - (~listed_top).sum(dim=1)  # n, (rows,)
    v_rest = torch.where(listed_rest, lp / T, -math.inf)
    v_tail = tail / T
    log_n = torch.where(unlisted_rest > 0, unlisted_rest.to(dtype).log(), -math.inf)
    log_z_v = torch.logsumexp(torch.cat([v_rest, (v_tail + log_n)[:, None]], dim=1), dim=1)
    log_p_rest = v_rest - log_z_v[:, None]  # (rows, K), -inf outside R
    log_p_tail = torch.where(unlisted_rest > 0, v_tail - log_z_v, -math.inf)

    # The student over R: its log-softmax (across ranks with a shard) and its masked sums.
    u = s / T
    columns = _local_columns(top, shard, width)  # this rank's columns, width for elsewhere
    ids_here = _local_columns(ids, shard, width)
    # (an extra -inf column, where the classes held elsewhere point: a rank's slice may be
    # empty)
    padded = F.pad(u, (0, 1), value=-math.inf).scatter(1, columns, -math.inf)
    log_z_u, *log_z_s = log_normalizers(
        [padded] if target is None else [padded, F.pad(s, (0, 1), value=-math.inf)], shard)
    masked = padded[:, :width]
    log_q = masked - log_z_u[:, None]
    unlisted_here = torch.ones(rows, width + 1, dtype=torch.bool, device=device)
    unlisted_here = unlisted_here.scatter(1, ids_here, False).scatter(1, columns, False)
    unlisted_here = unlisted_here[:, :width]
    sum_u_unlisted = torch.where(unlisted_here, u, 0.0).sum(dim=1)
    u_listed = F.pad(u, (0, 1)).gather(1, ids_here)  # (0 where held elsewhere)
    p_rest = log_p_rest.exp()
    held = ids_here < width
    kl_listed = torch.where(held & listed_rest & (p_rest > 0),
                            p_rest * (log_p_rest - (u_listed - log_z_u[:, None])), 0.0).sum(1)

    if target is None:
        counted = None
        ce = torch.zeros(rows, dtype=dtype, device=device)
    else:
        counted = target != config.ignore_index
        log_softmax_s = s - log_z_s[0][:, None]
        safe_target = torch.where(counted, target, 0)[:, None]
        target_here = _local_columns(safe_target, shard, width)
        ce = -F.pad(log_softmax_s, (0, 1)).gather(1, target_here)[:, 0]
        ce = torch.where(target_here[:, 0] < width, ce, 0.0)
    if shard is not None:  # this rank's shares of the student's sums and of the CE
        sum_u_unlisted, kl_listed, ce = shard.all_reduce(
            torch.stack([sum_u_unlisted, kl_listed, ce]), dist.ReduceOp.SUM)
    p_tail = log_p_tail.exp()
    kl_unlisted = torch.where(
        unlisted_rest > 0,
        p_tail * (unlisted_rest * log_p_tail - sum_u_unlisted + unlisted_rest * log_z_u), 0.0)
    # (one remaining class, listed or not: the point mass on both sides, KL exactly 0)
    rntk = T**2 * (kl_listed + kl_unlisted)

    parts = torch.stack([ce, local, rntk], dim=1)
    row_loss = config.ce_weight * ce + config.alpha * local + config.beta * rntk
    if counted is not None:
        parts = torch.where(counted[:, None], parts, 0.0)
        row_loss = torch.where(counted, row_loss, 0.0)
    if not need_student_grad:
        return row_loss, parts, None, None

    # The student's gradient: beta T (qbar - pbar) over R, the local term at the top-k, the
    # cross-entropy everywhere; with the caller's factor (1 / rows for a mean) folded in.
    scale = 1.0 if grad_scale is None else grad_scale
    rest_scale = config.beta * T * scale
    ce_scale = config.ce_weight * scale
    p = torch.where(unlisted_here, p_tail[:, None], 0.0)
    p = F.pad(p, (0, 1)).scatter(1, torch.where(listed_rest, ids_here, width), p_rest)[:, :width]
    grad = rest_scale * (log_q.exp() - p)
    if counted is not None:
        grad += ce_scale * log_softmax_s.exp()
        grad = F.pad(grad, (0, 1)).scatter_add(
            1, target_here, -ce_scale * torch.ones_like(ce[:, None]))[:, :width]
    local_scale = config.alpha * T / config.num_groups * scale
    assert grad_top_s is not None  # (asked for)
    grad = F.pad(grad, (0, 1)).scatter_add(1, columns, local_scale * grad_top_s)[:, :width]
    if counted is not None:
        grad = torch.where(counted[:, None], grad, 0.0)
    return row_loss, parts, grad.to(gradient_dtype(student.dtype)), None


def _local_columns(classes: torch.Tensor, shard: parallel.Shard | None,
                   width: int) -> torch.Tensor:
    """Global classes as columns of this rank's slice, ``width`` (an extra column) for
    classes held elsewhere."""
    local = classes if shard is None else classes - shard.offset
    return torch.where((local >= 0) & (local < width), local, width)


def _owned(s: torch.Tensor, classes: torch.Tensor, shard: parallel.Shard) -> torch.Tensor:
    """``s`` at global ``classes`` where this rank holds them, 0 elsewhere (summed over the
    ranks: the logits at the classes)."""
    columns = _local_columns(classes, shard, s.shape[1])
    return F.pad(s, (0, 1)).gather(1, columns)
