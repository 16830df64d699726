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
from typing import NamedTuple

import torch
import torch.distributed as dist
import triton

from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels.common import LN2, LOG2E
from ldrld_kernels.kernels.hardware import hardware_of, on_device
from ldrld_kernels.kernels.launcher import (
    SparseInputs,
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
from ldrld_kernels.pytorch.sparse_rows import teacher_top_k
from ldrld_kernels.pytorch.vectorized import local_term
from ldrld_kernels.sparse import SparseTeacher, tail_logprob

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


class _Statistics(NamedTuple):
    """Step 1's results: the launch's arguments, the splits' sums (m_u, z_u, m_v, z_v, w,
    m_s, z_s; [rows, splits] float64 each) and their candidates (local classes, [rows, n],
    and which are real), the rows' shifts, and the float32 c2 = log2(e) / T."""

    arguments: dict | None  # (None for an empty slice)
    sums: tuple[torch.Tensor, ...]
    classes: torch.Tensor
    ok: torch.Tensor
    shift: torch.Tensor
    c2: float


def _statistics(student, teacher, target, config, outputs, grad_scale,
                sparse: SparseInputs | None = None) -> _Statistics:
    """Step 1: each split's sums and k best groups (``sparse``: against a sparse teacher,
    whose w is the plain sum of the student's logits)."""
    rows, width = student.shape
    row_loss, parts, grad_s, grad_t = outputs
    device = student.device
    f64 = torch.float64
    # the kernel's log2(e) / T, rounded to float32 as there
    c2 = float(torch.tensor(LOG2E_, dtype=torch.float32)
               / torch.tensor(config.temperature, dtype=torch.float32))
    shift = torch.zeros(rows, dtype=torch.long, device=device)
    if not width:  # an empty slice: no sums, no candidates
        empty = torch.full((rows, 1), EMPTY_OFFSET, dtype=f64, device=device)
        zero = torch.zeros_like(empty)
        return _Statistics(None, (empty, zero, empty, zero, zero, empty, zero),
                           torch.zeros((rows, 0), dtype=torch.long, device=device),
                           torch.zeros((rows, 0), dtype=torch.bool, device=device), shift, c2)
    launch = split_launch(rows, width, student.element_size(),
                          0 if sparse else teacher.element_size(), hardware_of(device),
                          wave_rows=rows)
    arguments = split_arguments(
        kernel_arguments(student, teacher, target, config, row_loss, parts, grad_s, grad_t,
                         grad_scale, launch, sparse), launch, width, device)
    splits, work = arguments["splits"], arguments["work_ptr"]
    record = STATS.value + arguments["K_PAD"]
    _ldrld_split_stats_kernel[(rows, splits)](row0=0, MERGE=False, **arguments)
    records = work[:, :splits * record].view(rows, splits, record)
    sums = records[:, :, SPLIT_M_U.value:SPLIT_Z_S.value + 1].to(f64).unbind(dim=2)
    groups = records[:, :, STATS.value:].contiguous().view(torch.int32).reshape(rows, -1)
    vec = launch.vec
    if arguments["SHIFTED"]:
        shift = torch.arange(rows, device=device) * student.stride(0) % vec
    classes = (groups[:, :, None].long() * vec + torch.arange(vec, device=device)
               - shift[:, None, None]).reshape(rows, -1)
    ok = ((groups != NO_GROUP.value)[:, :, None].expand(-1, -1, vec).reshape(rows, -1)
          & (classes >= 0) & (classes < width))
    return _Statistics(arguments, tuple(sums), classes, ok, shift, c2)


def _candidates(student: torch.Tensor, stats: _Statistics, shard: parallel.Shard
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 2's candidates in increasing global id: (ids, real, local columns); empty ones
    past every class."""
    ok, classes = stats.ok, stats.classes
    ids = torch.where(ok, classes + shard.offset,
                      shard.num_classes + torch.arange(classes.shape[1], device=ok.device))
    order = ids.argsort(dim=1)
    return ids.gather(1, order), ok.gather(1, order), torch.where(ok, classes, 0).gather(1, order)


def _target(student, target, config, shard, teacher=None):
    """(counted, held here, local column (0 where not held), the student's and the teacher's
    logits there in float64 (0 where not held))."""
    rows, width = student.shape
    device = student.device
    counted = torch.ones(rows, dtype=torch.bool, device=device)
    y_held = torch.zeros(rows, dtype=torch.bool, device=device)
    y_local = torch.zeros(rows, dtype=torch.long, device=device)
    s_y = t_y = torch.zeros(rows, dtype=torch.float64, device=device)
    if target is not None:
        counted = target != config.ignore_index
        y_local = target - shard.offset
        y_held = counted & (y_local >= 0) & (y_local < width)
        y_local = torch.where(y_held, y_local, 0)
        if width:
            s_y, t_y = (torch.where(y_held, x.gather(1, y_local[:, None])[:, 0].double(), 0.0)
                        if x is not None else t_y for x in (student, teacher))
    return counted, y_held, y_local, s_y, t_y


def _one_left(kl_rest: torch.Tensor, shard: parallel.Shard, k: int) -> torch.Tensor:
    """One remaining class: the point mass on both sides, KL exactly 0 (C is a device tensor
    on an NCCL-only group, ``parallel.shard_of``)."""
    one_left = shard.num_classes - k == 1
    if isinstance(one_left, torch.Tensor):
        return torch.where(one_left, 0.0, kl_rest)
    return torch.zeros_like(kl_rest) if one_left else kl_rest


def _store_losses(row_loss, parts, config, counted, ce, local, kl_rest):
    T = config.temperature
    rntk = T * T * kl_rest
    values = torch.stack([config.ce_weight * ce + config.alpha * local + config.beta * rntk,
                          ce, local, rntk], dim=1)
    values = torch.where(counted[:, None], values, 0.0)
    row_loss.copy_(values[:, 0])
    parts.copy_(values[:, 1:])


def _launch_gradients(stats: _Statistics, k: int, width: int, per_row: dict, top_local,
                      g_top_s, g_top_t) -> None:
    """Step 3: the row record (``per_row``: slot -> [rows] values; the top-k's local classes
    (width where held elsewhere) and gradients), then the gradient launch."""
    arguments = stats.arguments
    assert arguments is not None  # (a slice with classes)
    work, splits, k_pad = arguments["work_ptr"], arguments["splits"], arguments["K_PAD"]
    rows = work.shape[0]
    row = work[:, splits * (STATS.value + k_pad):]
    for slot, value in per_row.items():
        row[:, slot.value] = value
    top_c = torch.full((rows, k_pad), width, dtype=torch.int32, device=work.device)
    top_c[:, :k] = top_local
    cells = row[:, ROW_WORDS.value:]
    cells[:, :k_pad] = top_c.view(torch.float32)
    cells[:, k_pad:k_pad + k] = g_top_s
    cells[:, 2 * k_pad:2 * k_pad + k] = g_top_t
    _ldrld_split_grads_kernel[(rows, splits)](row0=0, **gradient_arguments(arguments))


def _sharded_rows(student, teacher, target, config, need_student_grad, need_teacher_grad,
                  grad_scale, shard):
    rows, width = student.shape
    row_loss, parts, grad_s, grad_t = allocate_outputs(student, teacher, need_student_grad,
                                                       need_teacher_grad)
    if rows == 0:  # (on every rank: they agree on the row count)
        return row_loss, parts, grad_s, grad_t
    k, T = config.k, config.temperature
    f64 = torch.float64

    # ---- 1. Each split's sums and k best groups --------------------------------------------
    stats = _statistics(student, teacher, target, config, (row_loss, parts, grad_s, grad_t),
                        grad_scale)
    m_u, z_u, m_v, z_v, w, m_s, z_s = stats.sums
    c2 = stats.c2

    # ---- 2. The candidates: the global top-k, the others added to the sums ------------------
    ids, ok, columns = _candidates(student, stats, shard)
    cand_s, cand_t = (torch.where(ok, x.gather(1, columns).to(f64), -math.inf)
                      for x in (student, teacher))
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
    counted, y_held, y_local, s_y, t_y = _target(student, target, config, shard, teacher)

    # ---- Across ranks: offsets, then the sums against them ---------------------------------
    m_u, m_v, m_s = shard.all_reduce(torch.stack([r_u, r_v, r_s]), dist.ReduceOp.MAX)
    z_u, z_v, w, z_s, s_target = shard.all_reduce(torch.stack([
        _moved(r_u, sum_u, m_u), _moved(r_v, sum_v, m_v),
        _moved_w(sum_w, sum_v, r_u, r_v, m_u, m_v), _moved(r_s, sum_s, m_s), s_y]),
        dist.ReduceOp.SUM)

    # ---- The row's values (the same on every rank) -----------------------------------------
    lz_u, lz_v = torch.log2(z_u), torch.log2(z_v)
    kl_rest = _one_left(LN2_ * (w / z_v - (lz_v - lz_u)), shard, k)
    ce = LN2_ * (m_s + torch.log2(z_s)) - s_target if target is not None else \
        torch.zeros_like(kl_rest)
    local, grad_top_s, grad_top_t = local_term(s_top / T, t_top / T, config, need_student_grad,
                                               need_teacher_grad)
    _store_losses(row_loss, parts, config, counted, ce, local, kl_rest)
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
    keep = counted[:, None]
    _launch_gradients(stats, k, width, {
        ROW_COUNTED: counted, ROW_M_U: m_u, ROW_M_V: m_v, ROW_M_S: m_s, ROW_W_Q: w_q,
        ROW_W_P: w_p, ROW_W_CE: w_ce, ROW_T_SHIFT: LN2_ * (lz_u - lz_v) - kl_rest,
        ROW_Y_POS: (y_local + stats.shift).to(torch.int32).view(torch.float32),
        ROW_Y_REST: y_rest, ROW_G_Y: g_y},
        torch.where(top_held, top_local, width), torch.where(keep, g_top_s, 0.0),
        torch.where(keep, g_top_t, 0.0))
    return row_loss, parts, grad_s, grad_t


# A listed class that another rank holds, as the kernels' local id: past every position
ELSEWHERE = 2**30


def ldrld_sparse_rows(
    student: torch.Tensor,
    teacher: SparseTeacher,
    target: torch.Tensor | None,
    config: LossConfig,
    need_student_grad: bool,
    grad_scale: torch.Tensor | None,
    shard: parallel.Shard,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, None]:
    """``ldrld_rows`` against a sparse teacher (every rank holds the same global ``ids`` and
    ``logprobs``): the teacher's side of every sum is known on every rank, so only the
    student's cross the ranks (``sparse_rows`` states the math). The teacher's gradient is
    None (it is data)."""
    with on_device(student.device):
        return _sparse_sharded_rows(student, teacher, target, config, need_student_grad,
                                    grad_scale, shard)


def _sparse_sharded_rows(student, teacher, target, config, need_student_grad, grad_scale,
                         shard):
    rows, width = student.shape
    row_loss, parts, grad_s, _ = allocate_outputs(student, student, need_student_grad, False)
    if rows == 0:
        return row_loss, parts, grad_s, None
    k, T = config.k, config.temperature
    f64 = torch.float64
    ids, logprobs = teacher
    lp = logprobs.to(f64)
    tail = tail_logprob(logprobs, shard.num_classes)  # (float64)
    local_ids = ids - shard.offset
    held = (local_ids >= 0) & (local_ids < width)
    # ranked by the teacher, its top-k is known before the kernels run (the kernels take the
    # local columns, width for those held elsewhere)
    top_known = teacher_top_k(ids, lp, tail, k, shard.num_classes) \
        if config.rank_by == "teacher" else None
    top_here = None
    if top_known is not None:
        local_top = top_known - shard.offset
        top_here = torch.full((rows, triton.next_power_of_2(k)), width, dtype=torch.int32,
                              device=student.device)
        top_here[:, :k] = torch.where((local_top >= 0) & (local_top < width), local_top, width)
    sparse = SparseInputs(torch.where(held, local_ids, ELSEWHERE).to(torch.int32).contiguous(),
                          logprobs.to(torch.float32).contiguous(), tail.to(torch.float32),
                          top_here)

    # ---- 1. Each split's student sums and k best groups -------------------------------------
    stats = _statistics(student, student, target, config, (row_loss, parts, grad_s, None),
                        grad_scale, sparse)
    m_u, z_u, _, _, sum_rest, m_s, z_s = stats.sums
    c2 = stats.c2

    # ---- 2. The top-k, the student's sums over the remaining classes R ----------------------
    cand_ids, ok, columns = _candidates(student, stats, shard)
    cand_s = torch.where(ok, student.gather(1, columns).to(f64), -math.inf)
    if top_known is None or top_here is None:
        top, s_top, _ = parallel.global_top_k(cand_s, cand_s, cand_s, k, shard,
                                              classes=cand_ids)
    else:  # the logits at it, from the ranks that hold them
        top = top_known
        here = top_here[:, :k].long()
        owned = torch.where(here < width, student.gather(1, torch.where(here < width, here, 0))
                            .to(f64), 0.0) if width else torch.zeros_like(here, dtype=f64)
        s_top = shard.all_reduce(owned, dist.ReduceOp.SUM)
    extra = ok & ~(cand_ids[:, :, None] == top[:, None, :]).any(dim=2)
    r_u, sum_u = _sums(m_u, z_u, torch.where(extra, cand_s * c2, -math.inf))
    r_s, sum_s = _sums(m_s, z_s, torch.where(ok, cand_s * LOG2E_, -math.inf))
    sum_rest = sum_rest.sum(dim=1) + torch.where(extra, cand_s, 0.0).sum(dim=1)

    # the teacher over R (known everywhere): the listed classes outside the top-k, and the
    # n unlisted ones at the tail, in base 2 against a whole-number offset
    is_top = ids[:, :, None] == top[:, None, :]  # (rows, K, k)
    listed_rest = ~is_top.any(dim=2)
    listed_top = is_top.any(dim=1)
    t_top = torch.where(listed_top, torch.where(is_top, lp[:, :, None], 0.0).sum(dim=1),
                        tail[:, None])
    n = (shard.num_classes - ids.shape[1]) - (~listed_top).sum(dim=1)
    a_v = torch.where(listed_rest, lp * c2, -math.inf)
    a_tail = torch.where(n > 0, tail * c2, -math.inf)
    m_v = torch.ceil(torch.maximum(a_v.amax(dim=1), a_tail))
    e_v = torch.exp2(a_v - m_v[:, None])
    e_tail = torch.exp2(a_tail - m_v)
    z_v = e_v.sum(dim=1) + n * e_tail
    # this rank's share of sum_R p a_u z_v: the listed classes it holds, and its unlisted
    # ones of R (its R's sum less its listed ones')
    s_listed = torch.where(held & listed_rest, student.gather(
        1, torch.where(held, local_ids, 0)).to(f64), 0.0) if width else torch.zeros_like(lp)
    p_a_u = c2 * ((e_v * s_listed).sum(dim=1) + e_tail * (sum_rest - s_listed.sum(dim=1)))
    counted, y_held, y_local, s_y, _ = _target(student, target, config, shard)

    # ---- Across ranks: the offsets, then the sums against them ------------------------------
    m_u, m_s = shard.all_reduce(torch.stack([r_u, r_s]), dist.ReduceOp.MAX)
    z_u, z_s, p_a_u, s_target = shard.all_reduce(torch.stack([
        _moved(r_u, sum_u, m_u), _moved(r_s, sum_s, m_s), p_a_u, s_y]), dist.ReduceOp.SUM)

    # ---- The row's values (the same on every rank) -----------------------------------------
    # KL_rest = sum_R p (log p - log q) = ln 2 (sum_R p a_v - log2 Z_v - sum_R p a_u
    # + log2 Z_u), with a the base-2 exponents and Z the sums over R
    lz_u, lz_v = torch.log2(z_u), torch.log2(z_v)
    p_a_v = (torch.where(e_v > 0, e_v * a_v, 0.0).sum(dim=1)
             + torch.where(n > 0, n * e_tail * a_tail, 0.0))
    kl_rest = _one_left(LN2_ * ((p_a_v - p_a_u) / z_v - (m_v + lz_v) + (m_u + lz_u)), shard,
                        k)
    ce = LN2_ * (m_s + torch.log2(z_s)) - s_target if target is not None else \
        torch.zeros_like(kl_rest)
    local, grad_top_s, _ = local_term(s_top / T, t_top / T, config, need_student_grad, False)
    _store_losses(row_loss, parts, config, counted, ce, local, kl_rest)
    if grad_s is None or not width:
        return row_loss, parts, grad_s, None

    # ---- 3. The row record, then the gradients ---------------------------------------------
    scale = 1.0 if grad_scale is None else grad_scale.to(f64)
    rest_w = config.beta * T * scale
    ce_w = config.ce_weight * scale
    w_q, w_p = rest_w / z_u, rest_w / z_v
    t_shift = w_p * e_tail  # beta T p of an unlisted class of R
    g_top_s = config.alpha * T / config.num_groups * scale * grad_top_s
    w_ce = g_y = torch.zeros_like(w_q)
    y_rest = y_held
    if target is not None:
        top_is_y = top == target[:, None]
        y_listed = (ids == target[:, None]).any(dim=1)
        # (a listed target's gradient is the kernel's, with the other listed classes)
        y_rest = y_held & ~top_is_y.any(dim=1) & ~y_listed
        t_pow = integer_temperature(T)
        w_ce = ce_w / z_s if t_pow == 0 else ce_w * torch.exp2(t_pow * m_u - m_s) / z_s
        g_top_s = g_top_s + ce_w * (torch.exp2(s_top * LOG2E_ - m_s[:, None]) / z_s[:, None]
                                    - top_is_y.to(f64))
        g_y = (w_q * torch.exp2(s_y * c2 - m_u) - t_shift
               + ce_w * (torch.exp2(s_y * LOG2E_ - m_s) / z_s - 1.0))
    else:
        m_s = torch.zeros_like(m_s)
    top_local = top - shard.offset
    top_held = (top_local >= 0) & (top_local < width)
    keep = counted[:, None]
    _launch_gradients(stats, k, width, {
        ROW_COUNTED: counted, ROW_M_U: m_u, ROW_M_V: m_v, ROW_M_S: m_s, ROW_W_Q: w_q,
        ROW_W_P: w_p, ROW_W_CE: w_ce, ROW_T_SHIFT: t_shift,
        # (-1: no position, for the listed classes' one-hot, when another rank holds it)
        ROW_Y_POS: torch.where(y_held, y_local + stats.shift, -1).to(torch.int32)
        .view(torch.float32),
        ROW_Y_REST: y_rest, ROW_G_Y: g_y},
        torch.where(top_held, top_local, width), torch.where(keep, g_top_s, 0.0),
        torch.zeros_like(g_top_s))
    return row_loss, parts, grad_s, None
