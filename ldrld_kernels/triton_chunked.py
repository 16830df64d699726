"""Chunked Triton kernels for rows wider than one program can hold (LLM vocabularies).

Three launches, each row split into ``num_splits`` column ranges so that a few rows still fill
the GPU:

1. ``_chunk_stats_kernel`` (rows x splits) streams its range once in chunks of BLOCK_C. It
   keeps the k best candidates of the range (by the ranking logits, ties to the smaller
   index) and, with online log-sum-exp, the statistics of every other class of the range:
   for u = s / T and v = t / T, max and sum exp of u, of v, sum exp(v - max) (v - u); and the
   max and sum exp of s for the cross-entropy. A class leaving the candidates is added to
   the statistics then, so the selected classes are excluded exactly and nothing is ever
   subtracted (subtracting the top-k mass from a full-row sum cancels catastrophically when
   the top-k hold nearly all the probability).
2. ``_merge_kernel`` (rows) picks the global top-k from the candidates of all ranges, adds the
   candidates that lost to the statistics, and computes the local term, the remaining-class
   KL (KL = sum P (v - u) - lse(v) + lse(u) over R), the cross-entropy, the row loss, the
   gradients at the k selected classes, and what the third launch needs per row.
3. ``_chunk_grad_kernel`` (rows x splits) reads the logits a second time and writes the
   gradients of the other classes (formulas in ``triton_common``).

Traffic: the compulsory read of both logits and write of each gradient, plus one more read of
the logits. Extra memory: O(rows x splits x k).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ldrld_kernels.config import LossConfig
from ldrld_kernels.hardware import INTERPRETER, hardware_of
from ldrld_kernels.triton_common import (
    _ce_grad,
    _grad_scale,
    _load_logits,
    _local_term,
    _rest_grads,
    _store_grad,
    _store_row,
    allocate_outputs,
    num_warps_for,
)

# Columns per chunk of the streaming kernels: 4096 float32 per vector is 16 per thread at 8
# warps, which leaves registers for the handful of vectors alive at once.
BLOCK_C = 4096
MAX_SPLITS = 64
NUM_STATS = tl.constexpr(7)  # u max, u sum, v max, v sum, sum exp(v - max) (v - u), s max, s sum
# per row, for the gradient sweep: u max, u log-sum, v max, v log-sum, KL, s max, s log-sum
NUM_ROW_STATS = tl.constexpr(7)


@triton.jit
def _merge_lse(m1, z1, m2, z2):
    """(max, sum exp(x - max)) of the union of two sets given by their own pairs."""
    m = tl.maximum(m1, m2)
    m_safe = tl.where(m == -float("inf"), 0.0, m)
    return m, z1 * tl.exp(m1 - m_safe) + z2 * tl.exp(m2 - m_safe)


@triton.jit
def _rest_partial(u, v):
    """Remaining-class statistics of vectors u, v (excluded entries are -inf in both)."""
    u_max = tl.max(u, axis=0)
    v_max = tl.max(v, axis=0)
    u_sum = tl.sum(tl.exp(u - tl.where(u_max == -float("inf"), 0.0, u_max)), axis=0)
    ev = tl.exp(v - tl.where(v_max == -float("inf"), 0.0, v_max))
    v_sum = tl.sum(ev, axis=0)
    w = tl.sum(tl.where(v == -float("inf"), 0.0, ev * (v - u)), axis=0)
    return u_max, u_sum, v_max, v_sum, w


@triton.jit
def _merge_rest(u_max, u_sum, v_max, v_sum, w, u_max2, u_sum2, v_max2, v_sum2, w2):
    u_max, u_sum = _merge_lse(u_max, u_sum, u_max2, u_sum2)
    m = tl.maximum(v_max, v_max2)
    m_safe = tl.where(m == -float("inf"), 0.0, m)
    f1 = tl.exp(v_max - m_safe)
    f2 = tl.exp(v_max2 - m_safe)
    return u_max, u_sum, m, v_sum * f1 + v_sum2 * f2, w * f1 + w2 * f2


@triton.jit
def _worst(key, idx, valid):
    """Value and slot of the weakest candidate: the smallest value, among equal values the
    largest class index (it ranks last)."""
    key = tl.where(valid, key, float("inf"))
    worst = tl.min(key, axis=0)
    _, slot = tl.max(tl.where(valid & (key == worst), idx, -1), axis=0, return_indices=True,
                     return_indices_tie_break_left=True)
    return worst, slot


@triton.jit
def _chunk_stats_kernel(
    # pointers
    cand_s_ptr, cand_t_ptr, cand_idx_ptr, stats_ptr,
    student_ptr, teacher_ptr,
    # strides
    stride_s_row, stride_s_col, stride_t_row, stride_t_col,
    # sizes
    C, k, split_size,
    # runtime scalars
    T,
    # flags
    HAS_TARGET: tl.constexpr, RANK_BY_TEACHER: tl.constexpr, BLOCK_C: tl.constexpr,
    K_PAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    begin = split * split_size
    end = tl.minimum(begin + split_size, C)
    lanes = tl.arange(0, BLOCK_C)
    ranks = tl.arange(0, K_PAD)
    slot_used = ranks < k

    # Candidates: slots past k are never used; an empty slot has index C and value -inf.
    cand_s = tl.full([K_PAD], -float("inf"), tl.float32)
    cand_t = tl.full([K_PAD], -float("inf"), tl.float32)
    cand_idx = tl.full([K_PAD], 0, tl.int32) + C
    worst, worst_slot = _worst(cand_t if RANK_BY_TEACHER else cand_s, cand_idx, slot_used)
    u_max = tl.full([], -float("inf"), tl.float32)
    v_max = tl.full([], -float("inf"), tl.float32)
    s_max = tl.full([], -float("inf"), tl.float32)
    u_sum = tl.zeros([], tl.float32)
    v_sum = tl.zeros([], tl.float32)
    w = tl.zeros([], tl.float32)
    s_sum = tl.zeros([], tl.float32)

    for start in range(begin, end, BLOCK_C):  # trips: cdiv(C, BLOCK_C) / num_programs(1)
        cols = start + lanes
        in_chunk = cols < end
        s, t = _load_logits(student_ptr, teacher_ptr, row, cols, in_chunk, stride_s_row,
                            stride_s_col, stride_t_row, stride_t_col)
        key = t if RANK_BY_TEACHER else s

        # Chunk columns come after every candidate, so a tie never displaces one: only
        # values above the weakest candidate can enter, at most k of them.
        beats = key > worst
        rounds = tl.minimum(tl.sum(beats.to(tl.int32), axis=0), k)
        old_s, old_t, old_idx = cand_s, cand_t, cand_idx
        taken = lanes < 0
        for _ in range(rounds):  # trips: insertion_rounds
            best, pick = tl.max(tl.where(beats & ~taken, key, -float("inf")), axis=0,
                                return_indices=True, return_indices_tie_break_left=True)
            # (vector-only boolean algebra: the interpreter cannot broadcast a scalar int1)
            here = (lanes == pick) & (key > worst)
            taken = taken | here
            replace = ranks == tl.where(best > worst, worst_slot, K_PAD)
            cand_s = tl.where(replace, tl.sum(tl.where(here, s, 0.0), axis=0), cand_s)
            cand_t = tl.where(replace, tl.sum(tl.where(here, t, 0.0), axis=0), cand_t)
            cand_idx = tl.where(replace, start + pick, cand_idx)
            worst, worst_slot = _worst(cand_t if RANK_BY_TEACHER else cand_s, cand_idx,
                                       slot_used)

        # The chunk's other columns, and the candidates this chunk displaced, join the
        # remaining-class statistics.
        rest = in_chunk & ~taken
        u_max2, u_sum2, v_max2, v_sum2, w2 = _rest_partial(
            tl.where(rest, s / T, -float("inf")), tl.where(rest, t / T, -float("inf")))
        u_max, u_sum, v_max, v_sum, w = _merge_rest(u_max, u_sum, v_max, v_sum, w,
                                                    u_max2, u_sum2, v_max2, v_sum2, w2)
        # most chunks of a row change no candidate
        if rounds > 0:  # runs: insertion_chunks
            kept = tl.sum((old_idx[:, None] == cand_idx[None, :]).to(tl.int32), axis=1) > 0
            displaced = (old_idx < C) & ~kept
            u_max2, u_sum2, v_max2, v_sum2, w2 = _rest_partial(
                tl.where(displaced, old_s / T, -float("inf")),
                tl.where(displaced, old_t / T, -float("inf")))
            u_max, u_sum, v_max, v_sum, w = _merge_rest(u_max, u_sum, v_max, v_sum, w,
                                                        u_max2, u_sum2, v_max2, v_sum2, w2)
        if HAS_TARGET:
            chunk_max = tl.max(s, axis=0)
            chunk_sum = tl.sum(
                tl.exp(s - tl.where(chunk_max == -float("inf"), 0.0, chunk_max)), axis=0)
            s_max, s_sum = _merge_lse(s_max, s_sum, chunk_max, chunk_sum)

    out = (row * num_splits + split) * K_PAD + ranks
    tl.store(cand_s_ptr + out, cand_s)
    tl.store(cand_t_ptr + out, cand_t)
    tl.store(cand_idx_ptr + out, cand_idx)
    stats = stats_ptr + (row * num_splits + split) * NUM_STATS
    tl.store(stats + 0, u_max)
    tl.store(stats + 1, u_sum)
    tl.store(stats + 2, v_max)
    tl.store(stats + 3, v_sum)
    tl.store(stats + 4, w)
    tl.store(stats + 5, s_max)
    tl.store(stats + 6, s_sum)


@triton.jit
def _merge_kernel(
    # pointers
    loss_ptr, parts_ptr, row_stats_ptr, kth_value_ptr, kth_idx_ptr, grad_s_ptr, grad_t_ptr,
    cand_s_ptr, cand_t_ptr, cand_idx_ptr, stats_ptr, student_ptr, target_ptr, grad_scale_ptr,
    # strides
    stride_s_row, stride_s_col, stride_gs_row, stride_gt_row,
    # sizes
    C, k, num_splits,
    # runtime scalars
    T, alpha, beta, ce_weight, adw_scale, adw_decay, adw_offset, ignore_index,
    # flags
    HAS_TARGET: tl.constexpr, RANK_BY_TEACHER: tl.constexpr, STUDENT_GRAD: tl.constexpr,
    TEACHER_GRAD: tl.constexpr, SCALE_GRAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
    K_PAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    ranks = tl.arange(0, K_PAD)
    in_top = ranks < k

    # The candidates of every range; each class appears at most once.
    offs = tl.arange(0, SPLITS_PAD * K_PAD)
    in_split = offs // K_PAD < num_splits
    base = row * num_splits * K_PAD
    cand_s = tl.load(cand_s_ptr + base + offs, mask=in_split, other=-float("inf"))
    cand_t = tl.load(cand_t_ptr + base + offs, mask=in_split, other=-float("inf"))
    cand_idx = tl.load(cand_idx_ptr + base + offs, mask=in_split, other=C)
    available = in_split & (offs % K_PAD < k) & (cand_idx < C)
    key = cand_t if RANK_BY_TEACHER else cand_s

    top_s = tl.zeros([K_PAD], dtype=tl.float32)
    top_t = tl.zeros([K_PAD], dtype=tl.float32)
    top_idx = tl.zeros([K_PAD], dtype=tl.int32) + C
    top_key = tl.zeros([K_PAD], dtype=tl.float32)
    for r in range(k):  # trips: k
        best = tl.max(tl.where(available, key, -float("inf")), axis=0)
        pick = tl.min(tl.where(available & (key == best), cand_idx, C), axis=0)
        here = available & (cand_idx == pick)
        available = available & ~here
        top_s = tl.where(ranks == r, tl.sum(tl.where(here, cand_s, 0.0), axis=0), top_s)
        top_t = tl.where(ranks == r, tl.sum(tl.where(here, cand_t, 0.0), axis=0), top_t)
        top_idx = tl.where(ranks == r, pick, top_idx)
        top_key = tl.where(ranks == r, best, top_key)
    local, grad_top_s, grad_top_t = _local_term(top_s, top_t, k, T, alpha, adw_scale,
                                                adw_decay, adw_offset, K_PAD)

    # Statistics of the ranges, plus the candidates that were not selected.
    splits = tl.arange(0, SPLITS_PAD)
    stats = stats_ptr + (row * num_splits + splits) * NUM_STATS
    used = splits < num_splits
    u_maxes = tl.load(stats + 0, mask=used, other=-float("inf"))
    v_maxes = tl.load(stats + 2, mask=used, other=-float("inf"))
    u_max = tl.max(u_maxes, axis=0)
    v_max = tl.max(v_maxes, axis=0)
    u_scale = tl.exp(u_maxes - tl.where(u_max == -float("inf"), 0.0, u_max))
    v_scale = tl.exp(v_maxes - tl.where(v_max == -float("inf"), 0.0, v_max))
    u_sum = tl.sum(tl.load(stats + 1, mask=used, other=0.0) * u_scale, axis=0)
    v_sum = tl.sum(tl.load(stats + 3, mask=used, other=0.0) * v_scale, axis=0)
    w = tl.sum(tl.load(stats + 4, mask=used, other=0.0) * v_scale, axis=0)
    u_max2, u_sum2, v_max2, v_sum2, w2 = _rest_partial(
        tl.where(available, cand_s / T, -float("inf")),
        tl.where(available, cand_t / T, -float("inf")))
    u_max, u_sum, v_max, v_sum, w = _merge_rest(u_max, u_sum, v_max, v_sum, w,
                                                u_max2, u_sum2, v_max2, v_sum2, w2)
    u_log_sum = tl.log(u_sum)
    v_log_sum = tl.log(v_sum)
    kl_rest = w / v_sum + (u_max - v_max) + (u_log_sum - v_log_sum)

    if HAS_TARGET:
        y = tl.load(target_ptr + row)
        counted = y != ignore_index
        s_maxes = tl.load(stats + 5, mask=used, other=-float("inf"))
        s_max = tl.max(s_maxes, axis=0)
        s_scale = tl.exp(s_maxes - tl.where(s_max == -float("inf"), 0.0, s_max))
        s_log_sum = tl.log(tl.sum(tl.load(stats + 6, mask=used, other=0.0) * s_scale, axis=0))
        y_safe = tl.where(counted & (y >= 0) & (y < C), y, 0)
        s_y = tl.load(student_ptr + row * stride_s_row + y_safe * stride_s_col).to(tl.float32)
        ce = (s_max - s_y) + s_log_sum
        grad_top_s += _ce_grad(top_s, top_idx, y, s_max, s_log_sum, ce_weight)
    else:
        counted = True
        ce = 0.0
        s_max = 0.0
        s_log_sum = 0.0
    _store_row(loss_ptr, parts_ptr, row, counted, ce, local, T * T * kl_rest, ce_weight, alpha,
               beta)

    # What the gradient sweep needs, and the gradients at the selected classes.
    out = row_stats_ptr + row * NUM_ROW_STATS
    tl.store(out + 0, u_max)
    tl.store(out + 1, u_log_sum)
    tl.store(out + 2, v_max)
    tl.store(out + 3, v_log_sum)
    tl.store(out + 4, kl_rest)
    tl.store(out + 5, s_max)
    tl.store(out + 6, s_log_sum)
    last = ranks == k - 1
    tl.store(kth_value_ptr + row, tl.sum(tl.where(last, top_key, 0.0), axis=0))
    tl.store(kth_idx_ptr + row, tl.sum(tl.where(last, top_idx, 0), axis=0))
    selected = in_top & (top_idx < C)
    scale = _grad_scale(grad_scale_ptr, SCALE_GRAD)
    if STUDENT_GRAD:
        _store_grad(grad_s_ptr + row * stride_gs_row, top_idx, grad_top_s, scale, counted,
                    selected)
    if TEACHER_GRAD:
        _store_grad(grad_t_ptr + row * stride_gt_row, top_idx, grad_top_t, scale, counted,
                    selected)


@triton.jit
def _chunk_grad_kernel(
    # pointers
    grad_s_ptr, grad_t_ptr,
    student_ptr, teacher_ptr, target_ptr, row_stats_ptr, kth_value_ptr, kth_idx_ptr,
    grad_scale_ptr,
    # strides
    stride_s_row, stride_s_col, stride_t_row, stride_t_col, stride_gs_row, stride_gt_row,
    # sizes
    C, split_size,
    # runtime scalars
    T, beta, ce_weight, ignore_index,
    # flags
    HAS_TARGET: tl.constexpr, RANK_BY_TEACHER: tl.constexpr, STUDENT_GRAD: tl.constexpr,
    TEACHER_GRAD: tl.constexpr, SCALE_GRAD: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    begin = tl.program_id(1) * split_size
    end = tl.minimum(begin + split_size, C)
    lanes = tl.arange(0, BLOCK_C)
    stats = row_stats_ptr + row * NUM_ROW_STATS
    u_max = tl.load(stats + 0)
    u_log_sum = tl.load(stats + 1)
    v_max = tl.load(stats + 2)
    v_log_sum = tl.load(stats + 3)
    kl_rest = tl.load(stats + 4)
    s_max = tl.load(stats + 5)
    s_log_sum = tl.load(stats + 6)
    kth_value = tl.load(kth_value_ptr + row)
    kth_idx = tl.load(kth_idx_ptr + row)
    scale = _grad_scale(grad_scale_ptr, SCALE_GRAD)
    if HAS_TARGET:
        y = tl.load(target_ptr + row)
        counted = y != ignore_index
    else:
        counted = True

    for start in range(begin, end, BLOCK_C):  # trips: cdiv(C, BLOCK_C) / num_programs(1)
        cols = start + lanes
        in_chunk = cols < end
        s, t = _load_logits(student_ptr, teacher_ptr, row, cols, in_chunk, stride_s_row,
                            stride_s_col, stride_t_row, stride_t_col)
        key = t if RANK_BY_TEACHER else s
        # the top-k are the classes at or above the k-th in (value desc, index asc) order
        selected = (key > kth_value) | ((key == kth_value) & (cols <= kth_idx))
        rest = in_chunk & ~selected
        grad_s, grad_t = _rest_grads(s, t, rest, u_max, u_log_sum, v_max, v_log_sum, kl_rest,
                                     T, beta)
        if STUDENT_GRAD:
            if HAS_TARGET:
                grad_s += _ce_grad(s, cols, y, s_max, s_log_sum, ce_weight)
            _store_grad(grad_s_ptr + row * stride_gs_row, cols, grad_s, scale, counted, rest)
        if TEACHER_GRAD:
            _store_grad(grad_t_ptr + row * stride_gt_row, cols, grad_t, scale, counted, rest)


def _programs_to_fill(device: torch.device) -> int:
    hardware = hardware_of(device)
    if hardware is INTERPRETER:
        return 1
    return 4 * hardware.multiprocessors


def split_layout(rows: int, num_classes: int, device: torch.device, block: int,
                 num_splits: int | None = None) -> tuple[int, int]:
    """``(num_splits, split_size)``: enough programs to fill the device, whole chunks each."""
    chunks = triton.cdiv(num_classes, block)
    if num_splits is None:
        num_splits = min(MAX_SPLITS, triton.cdiv(_programs_to_fill(device), max(rows, 1)))
    split_size = triton.cdiv(chunks, max(1, min(num_splits, chunks))) * block
    return triton.cdiv(num_classes, split_size), split_size


def ldrld_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    config: LossConfig,
    need_student_grad: bool,
    need_teacher_grad: bool,
    grad_scale: torch.Tensor | None = None,
    *,
    block: int | None = None,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Same contract as ``triton_fused.ldrld_rows``, for any number of classes. ``block``
    (default BLOCK_C) and ``num_splits`` (default: enough programs to fill the device) fix the
    chunk width and the ranges per row."""
    block = block or BLOCK_C
    rows, num_classes = student.shape
    device = student.device
    row_loss, parts, grad_s, grad_t = allocate_outputs(student, teacher, need_student_grad,
                                                       need_teacher_grad)
    if rows == 0:
        return row_loss, parts, grad_s, grad_t

    splits, split_size = split_layout(rows, num_classes, device, block, num_splits)
    k_pad = triton.next_power_of_2(config.k)
    cand_s = torch.empty(rows, splits, k_pad, dtype=torch.float32, device=device)
    cand_t = torch.empty_like(cand_s)
    cand_idx = torch.empty(rows, splits, k_pad, dtype=torch.int32, device=device)
    stats = torch.empty(rows, splits, NUM_STATS.value, dtype=torch.float32, device=device)
    row_stats = torch.empty(rows, NUM_ROW_STATS.value, dtype=torch.float32, device=device)
    kth_value = torch.empty(rows, dtype=torch.float32, device=device)
    kth_idx = torch.empty(rows, dtype=torch.int32, device=device)
    has_target = target is not None
    target_arg = target if has_target else row_loss
    grad_s_arg = grad_s if grad_s is not None else row_loss
    grad_t_arg = grad_t if grad_t is not None else row_loss
    grad_s_stride = grad_s.stride(0) if grad_s is not None else 0
    grad_t_stride = grad_t.stride(0) if grad_t is not None else 0
    flags = {"HAS_TARGET": has_target, "RANK_BY_TEACHER": config.rank_by == "teacher"}
    grad_flags = {"STUDENT_GRAD": grad_s is not None, "TEACHER_GRAD": grad_t is not None,
                  "SCALE_GRAD": grad_scale is not None}
    grad_scale_arg = grad_scale if grad_scale is not None else row_loss

    _chunk_stats_kernel[(rows, splits)](
        cand_s, cand_t, cand_idx, stats,
        student, teacher,
        student.stride(0), student.stride(1), teacher.stride(0), teacher.stride(1),
        num_classes, config.k, split_size,
        config.temperature,
        **flags, BLOCK_C=block, K_PAD=k_pad, num_warps=num_warps_for(block),
    )
    _merge_kernel[(rows,)](
        row_loss, parts, row_stats, kth_value, kth_idx, grad_s_arg, grad_t_arg,
        cand_s, cand_t, cand_idx, stats, student, target_arg, grad_scale_arg,
        student.stride(0), student.stride(1), grad_s_stride, grad_t_stride,
        num_classes, config.k, splits,
        config.temperature, config.alpha, config.beta, config.ce_weight,
        config.adw_scale, config.adw_decay, config.adw_offset, config.ignore_index,
        **flags, **grad_flags, SPLITS_PAD=triton.next_power_of_2(splits), K_PAD=k_pad,
        num_warps=4,
    )
    if grad_s is not None or grad_t is not None:
        _chunk_grad_kernel[(rows, splits)](
            grad_s_arg, grad_t_arg,
            student, teacher, target_arg, row_stats, kth_value, kth_idx, grad_scale_arg,
            student.stride(0), student.stride(1), teacher.stride(0), teacher.stride(1),
            grad_s_stride, grad_t_stride,
            num_classes, split_size,
            config.temperature, config.beta, config.ce_weight, config.ignore_index,
            **flags, **grad_flags, BLOCK_C=block, num_warps=num_warps_for(block),
        )
    return row_loss, parts, grad_s, grad_t


def profile_hints(kernel_name: str, args: dict) -> dict[str, float]:
    """For ``ldrld profile``: the data-dependent trip counts of ``_chunk_stats_kernel``,
    simulated on random normal logits (4 rows): the mean number of candidate insertion rounds
    per chunk and the fraction of chunks that run any."""
    if kernel_name != "_chunk_stats_kernel":
        return {}
    classes, k, split_size, block = args["C"], args["k"], args["split_size"], args["BLOCK_C"]
    generator = torch.Generator().manual_seed(0)
    rounds = []
    for key in torch.randn(4, classes, generator=generator):
        for begin in range(0, classes, split_size):
            best = torch.empty(0)
            for start in range(begin, min(begin + split_size, classes), block):
                chunk = key[start:min(start + block, begin + split_size, classes)]
                worst = best.min() if best.numel() == k else -math.inf
                rounds.append(min(int((chunk > worst).sum()), k))
                best = torch.topk(torch.cat([best, chunk]), min(k, best.numel() + chunk.numel()))
                best = best.values
    mean = sum(rounds) / len(rounds)
    return {"insertion_rounds": mean,
            "insertion_chunks": sum(r > 0 for r in rounds) / len(rounds)}
