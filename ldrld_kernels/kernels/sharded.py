"""Vocabulary-parallel LDRLD on the Triton kernel: each rank's slice of the classes streamed
by the LDRLD kernels (``ldrld``), the row statistics combined across ranks in between
(``parallel`` states the math).

A rank's slice is laid out as a wide row (``policy.split_launch``, one wave of every row):
1. ``_ldrld_split_stats_kernel`` without MERGE: each split streams the selection and the
   statistics over its chunks and writes its record, but no program merges the records: the
   ranks must first agree on the top-k;
2. here, on the device, in float64 and without a host sync: the candidate classes (the
   classes of every split's k best groups; the rank's top-k lies among them, by the argument
   of ``ldrld``'s step 1) go to ``parallel.global_top_k``; the splits' sums and the
   candidates outside the global top-k make the rank's sums of its remaining classes, kept
   as (whole-number base-2 offset m, z = sum 2^(x log2(e) / T - m)); one all-reduce MAX of
   the offsets, one all-reduce SUM of the sums moved to them (and of the target's logit,
   from its owner). Every rank then has the row's statistics and computes the same row
   losses, and writes the row record that the gradient phase reads;
3. ``_ldrld_split_grads_kernel``: each split writes the gradients of its chunks, then the
   selected classes and the target that lie in it.
Traffic: each input is read three times and each gradient written once; the first read and
the others are separated by collectives, so the re-reads come from L2 only for rows that fit
in it. Communication as in ``parallel``: rows x 4 k world numbers gathered, rows x 8
reduced.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels.common import LN2, LOG2E
from ldrld_kernels.kernels.hardware import hardware_of, on_device
from ldrld_kernels.kernels.launcher import (
    allocate_outputs,
    gradient_arguments,
    integer_temperature,
    kernel_arguments,
    split_arguments,
)
from ldrld_kernels.kernels.ldrld import (
    NO_GROUP,
    ROW_COUNTED,
    ROW_G_Y,
    ROW_M_S,
    ROW_M_U,
    ROW_M_V,
    ROW_T_SHIFT,
    ROW_W_CE,
    ROW_W_P,
    ROW_W_Q,
    ROW_WORDS,
    ROW_Y_POS,
    ROW_Y_REST,
    SPLIT_M_U,
    SPLIT_Z_S,
    STATS,
    _ldrld_split_grads_kernel,
    _ldrld_split_stats_kernel,
)
from ldrld_kernels.kernels.policy import split_launch
from ldrld_kernels.pytorch import parallel
from ldrld_kernels.pytorch.vectorized import local_term

LN2_, LOG2E_ = LN2.value, LOG2E.value
EMPTY_OFFSET = -1e30  # the kernel's offset of an empty sum


def _moved(m: torch.Tensor, z: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """z = sum 2^(x - m) against the offset ``new`` >= m."""
    return z * torch.exp2(m - new)


def _moved_w(w, z_v, m_u, m_v, new_u, new_v):
    """``ldrld._move_w``: w = sum 2^a_v (a_v - a_u) moved to new offsets."""
    return (w - ((new_v - m_v) - (new_u - m_u)) * z_v) * torch.exp2(m_v - new_v)


def _sums(m: torch.Tensor, z: torch.Tensor, extra: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the splits' (m, z) ([rows, splits]) and the classes ``extra`` ([rows, n],
    base-2 exponents, -inf for none) as one (offset, sum)."""
    top = extra.amax(dim=1) if extra.shape[1] else torch.full_like(m[:, 0], -math.inf)
    offset = torch.maximum(m.amax(dim=1), torch.ceil(top))
    total = _moved(m, z, offset[:, None]).sum(dim=1) + torch.exp2(extra - offset[:, None]).sum(1)
    return offset, total


def ldrld_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    config: LossConfig,
    need_student_grad: bool,
    need_teacher_grad: bool,
    grad_scale: torch.Tensor | None,
    shard: parallel.Shard,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``launcher.ldrld_rows`` on this rank's slice of the classes (``shard``): every
    rank gets the same row losses and parts and the gradients of its slice."""
    # the launches on the logits' device, and its current stream (hardware.on_device)
    with on_device(student.device):
        return _sharded_rows(student, teacher, target, config, need_student_grad,
                             need_teacher_grad, grad_scale, shard)


def _sharded_rows(student, teacher, target, config, need_student_grad, need_teacher_grad,
                  grad_scale, shard):
    rows, width = student.shape
    row_loss, parts, grad_s, grad_t = allocate_outputs(student, teacher, need_student_grad,
                                                       need_teacher_grad)
    if rows == 0:  # (on every rank: they agree on the row count)
        return row_loss, parts, grad_s, grad_t
    k, T = config.k, config.temperature
    device = student.device
    f64 = torch.float64
    # the kernel's log2(e) / T, rounded to float32 as there
    c2 = float(torch.tensor(LOG2E_, dtype=torch.float32) / torch.tensor(T, dtype=torch.float32))

    # ---- 1. Each split's sums and k best groups --------------------------------------------
    if width:
        launch = split_launch(rows, width, student.element_size(), teacher.element_size(),
                              hardware_of(device), wave_rows=rows)
        arguments = split_arguments(
            kernel_arguments(student, teacher, target, config, row_loss, parts, grad_s,
                             grad_t, grad_scale, launch), launch, width, device)
        splits, work, k_pad = arguments["splits"], arguments["work_ptr"], arguments["K_PAD"]
        record = STATS.value + k_pad
        grid = (rows, splits)
        _ldrld_split_stats_kernel[grid](row0=0, MERGE=False, **arguments)
        records = work[:, :splits * record].view(rows, splits, record)
        m_u, z_u, m_v, z_v, w, m_s, z_s = (
            records[:, :, SPLIT_M_U.value:SPLIT_Z_S.value + 1].to(f64).unbind(dim=2))
        groups = records[:, :, STATS.value:].contiguous().view(torch.int32).reshape(rows, -1)
        vec = launch.vec
        shift = torch.zeros(rows, dtype=torch.long, device=device)
        if arguments["SHIFTED"]:
            shift = torch.arange(rows, device=device) * student.stride(0) % vec
        classes = (groups[:, :, None].long() * vec + torch.arange(vec, device=device)
                   - shift[:, None, None]).reshape(rows, -1)
        ok = ((groups != NO_GROUP.value)[:, :, None].expand(-1, -1, vec).reshape(rows, -1)
              & (classes >= 0) & (classes < width))
    else:  # an empty slice: no sums, no candidates
        empty = torch.full((rows, 1), EMPTY_OFFSET, dtype=f64, device=device)
        m_u = m_v = m_s = empty
        z_u = z_v = w = z_s = torch.zeros_like(empty)
        classes = torch.zeros((rows, 0), dtype=torch.long, device=device)
        ok = torch.zeros((rows, 0), dtype=torch.bool, device=device)

    # ---- 2. The candidates: the global top-k, the others added to the sums ------------------
    safe = torch.where(ok, classes, 0)
    cand_s, cand_t = (torch.where(ok, x.gather(1, safe).to(f64), -math.inf)
                      for x in (student, teacher))
    # global ids in increasing order; empty candidates past every class
    ids = torch.where(ok, classes + shard.offset,
                      shard.num_classes + torch.arange(classes.shape[1], device=device))
    order = ids.argsort(dim=1)
    ids, cand_s, cand_t, ok = (x.gather(1, order) for x in (ids, cand_s, cand_t, ok))
    key = cand_t if config.rank_by == "teacher" else cand_s
    top_global, s_top, t_top = parallel.global_top_k(key, cand_s, cand_t, k, shard,
                                                     classes=ids)
    extra = ok & ~(ids[:, :, None] == top_global[:, None, :]).any(dim=2)
    a_u = torch.where(extra, cand_s * c2, -math.inf)
    a_v = torch.where(extra, cand_t * c2, -math.inf)
    r_u, sum_u = _sums(m_u, z_u, a_u)
    r_v, sum_v = _sums(m_v, z_v, a_v)
    e_v = torch.exp2(a_v - r_v[:, None])
    diff = (a_v - r_v[:, None]) - (a_u - r_u[:, None])
    sum_w = (_moved_w(w, z_v, m_u, m_v, r_u[:, None], r_v[:, None]).sum(dim=1)
             + torch.where(e_v == 0, 0.0, e_v * diff).sum(dim=1))
    # the cross-entropy's sums take every class, the candidates too
    r_s, sum_s = _sums(m_s, z_s, torch.where(ok, cand_s * LOG2E_, -math.inf))

    counted = torch.ones(rows, dtype=torch.bool, device=device)
    y_held = torch.zeros(rows, dtype=torch.bool, device=device)
    y_local = torch.zeros(rows, dtype=torch.long, device=device)
    s_y = t_y = torch.zeros(rows, dtype=f64, device=device)
    if target is not None:
        counted = target != config.ignore_index
        y_local = target - shard.offset
        y_held = counted & (y_local >= 0) & (y_local < width)
        y_local = torch.where(y_held, y_local, 0)
        if width:
            s_y, t_y = (torch.where(y_held, x.gather(1, y_local[:, None])[:, 0].to(f64), 0.0)
                        for x in (student, teacher))

    # ---- Across ranks: offsets, then the sums against them ---------------------------------
    m_u, m_v, m_s = shard.all_reduce(torch.stack([r_u, r_v, r_s]), dist.ReduceOp.MAX)
    z_u, z_v, w, z_s, s_target = shard.all_reduce(torch.stack([
        _moved(r_u, sum_u, m_u), _moved(r_v, sum_v, m_v),
        _moved_w(sum_w, sum_v, r_u, r_v, m_u, m_v), _moved(r_s, sum_s, m_s), s_y]),
        dist.ReduceOp.SUM)

    # ---- The row's values (the same on every rank) -----------------------------------------
    lz_u, lz_v = torch.log2(z_u), torch.log2(z_v)
    kl_rest = LN2_ * (w / z_v - (lz_v - lz_u))
    # one remaining class: the point mass on both sides, KL exactly 0 (C is a device tensor
    # on an NCCL-only group, ``parallel.shard_of``)
    one_left = shard.num_classes - k == 1
    if isinstance(one_left, torch.Tensor):
        kl_rest = torch.where(one_left, 0.0, kl_rest)
    elif one_left:
        kl_rest = torch.zeros_like(kl_rest)
    ce = LN2_ * (m_s + torch.log2(z_s)) - s_target if target is not None else \
        torch.zeros_like(kl_rest)
    local, grad_top_s, grad_top_t = local_term(s_top / T, t_top / T, config, need_student_grad,
                                               need_teacher_grad)
    rntk = T * T * kl_rest
    values = torch.stack([config.ce_weight * ce + config.alpha * local + config.beta * rntk,
                          ce, local, rntk], dim=1)
    values = torch.where(counted[:, None], values, 0.0)
    row_loss.copy_(values[:, 0])
    parts.copy_(values[:, 1:])
    if grad_s is None and grad_t is None or not width:
        return row_loss, parts, grad_s, grad_t

    # ---- 3. The row record, then the gradients ---------------------------------------------
    scale = 1.0 if grad_scale is None else grad_scale.to(f64)
    rest_w = config.beta * T * scale
    ce_w = config.ce_weight * scale
    w_q, w_p = rest_w / z_u, rest_w / z_v
    w_ce = torch.zeros_like(w_q)
    g_y = torch.zeros_like(w_q)
    top_local = top_global - shard.offset
    top_held = (top_local >= 0) & (top_local < width)
    local_w = config.alpha * T / config.num_groups * scale
    g_top_s = torch.zeros_like(s_top) if grad_top_s is None else local_w * grad_top_s
    g_top_t = torch.zeros_like(t_top) if grad_top_t is None else local_w * grad_top_t
    y_rest = y_held
    if target is not None:
        top_is_y = top_global == target[:, None]
        y_rest = y_held & ~top_is_y.any(dim=1)
        t_pow = integer_temperature(T)
        w_ce = ce_w / z_s if t_pow == 0 else ce_w * torch.exp2(t_pow * m_u - m_s) / z_s
        g_top_s = g_top_s + ce_w * (torch.exp2(s_top * LOG2E_ - m_s[:, None]) / z_s[:, None]
                                    - top_is_y.to(f64))
        g_y = (w_q * torch.exp2(s_y * c2 - m_u) - w_p * torch.exp2(t_y * c2 - m_v)
               + ce_w * (torch.exp2(s_y * LOG2E_ - m_s) / z_s - 1.0))
    else:
        m_s = torch.zeros_like(m_s)
    row = work[:, splits * record:]
    for slot, value in ((ROW_COUNTED, counted), (ROW_M_U, m_u), (ROW_M_V, m_v),
                        (ROW_M_S, m_s), (ROW_W_Q, w_q), (ROW_W_P, w_p), (ROW_W_CE, w_ce),
                        (ROW_T_SHIFT, LN2_ * (lz_u - lz_v) - kl_rest),
                        (ROW_Y_POS, (y_local + shift).to(torch.int32).view(torch.float32)),
                        (ROW_Y_REST, y_rest), (ROW_G_Y, g_y)):
        row[:, slot.value] = value
    top_c = torch.full((rows, k_pad), width, dtype=torch.int32, device=device)
    top_c[:, :k] = torch.where(top_held, top_local, width)
    cells = row[:, ROW_WORDS.value:]
    cells[:, :k_pad] = top_c.view(torch.float32)
    keep = counted[:, None]
    cells[:, k_pad:k_pad + k] = torch.where(keep, g_top_s, 0.0)
    cells[:, 2 * k_pad:2 * k_pad + k] = torch.where(keep, g_top_t, 0.0)
    _ldrld_split_grads_kernel[grid](row0=0, **gradient_arguments(arguments))
    return row_loss, parts, grad_s, grad_t
