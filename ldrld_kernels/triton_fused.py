"""Fused Triton kernel: one program per row computes the LDRLD row loss and its gradients.

The program loads the student and teacher rows once, selects the top-k classes, and computes
the local term (``triton_common._local_term``: closed-form pairs, no softmax per pair), the
remaining-class KL over the other C - k classes, the cross-entropy, and the gradients of the
row loss (formulas in ``triton_common``), which it writes in the same pass, already divided
by the row count for a mean. Backward only scales them by the upstream gradient, in place,
and skips that pass when the upstream gradient is exactly 1 (``api._LDRLDFunction``), so a
plain ``loss.backward()`` moves just the compulsory bytes. Rows wider than MAX_FUSED go to
the chunked kernels (``triton_chunked``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ldrld_kernels.config import LossConfig
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

# One program holds the whole row in registers (two float32 vectors of BLOCK_C plus a few
# masks). Past 16,384 classes that spills badly; wider rows go to the chunked kernels.
MAX_FUSED = 16384


@triton.jit
def _ldrld_fused_kernel(
    # pointers
    loss_ptr, parts_ptr, grad_s_ptr, grad_t_ptr,
    student_ptr, teacher_ptr, target_ptr, grad_scale_ptr,
    # strides
    stride_s_row, stride_s_col, stride_t_row, stride_t_col, stride_gs_row, stride_gt_row,
    # sizes
    C, k,
    # runtime scalars
    T, alpha, beta, ce_weight, adw_scale, adw_decay, adw_offset, ignore_index,
    # flags
    HAS_TARGET: tl.constexpr, RANK_BY_TEACHER: tl.constexpr, STUDENT_GRAD: tl.constexpr,
    TEACHER_GRAD: tl.constexpr, SCALE_GRAD: tl.constexpr, BLOCK_C: tl.constexpr,
    K_PAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    in_row = cols < C
    s, t = _load_logits(student_ptr, teacher_ptr, row, cols, in_row, stride_s_row,
                        stride_s_col, stride_t_row, stride_t_col)

    # Top-k: k rounds of a (max, leftmost index) reduction over the row already in
    # registers. That is the tie rule exactly (smaller index first), works for any k (tl.topk
    # needs a power of two and returns no indices; packing value and index into one key for
    # tl.sort costs a full bitonic sort), and for the k of practice (<= 16) costs far less
    # than loading the row.
    key = t if RANK_BY_TEACHER else s
    ranks = tl.arange(0, K_PAD)
    top_idx = tl.zeros([K_PAD], dtype=tl.int32)
    top_s = tl.zeros([K_PAD], dtype=tl.float32)
    top_t = tl.zeros([K_PAD], dtype=tl.float32)
    taken = cols < 0
    for r in range(k):  # trips: k
        _, pick = tl.max(tl.where(taken, -float("inf"), key), axis=0, return_indices=True,
                         return_indices_tie_break_left=True)
        here = cols == pick
        taken = taken | here
        top_idx = tl.where(ranks == r, pick, top_idx)
        top_s = tl.where(ranks == r, tl.sum(tl.where(here, s, 0.0), axis=0), top_s)
        top_t = tl.where(ranks == r, tl.sum(tl.where(here, t, 0.0), axis=0), top_t)
    local, grad_top_s, grad_top_t = _local_term(top_s, top_t, k, T, alpha, adw_scale,
                                                adw_decay, adw_offset, K_PAD)

    # Remaining classes: the selected ones excluded exactly, not subtracted from a sum.
    rest = in_row & ~taken
    u = tl.where(rest, s / T, -float("inf"))
    v = tl.where(rest, t / T, -float("inf"))
    u_max = tl.max(u, axis=0)
    v_max = tl.max(v, axis=0)
    u_log_sum = tl.log(tl.sum(tl.exp(u - u_max), axis=0))
    v_log_sum = tl.log(tl.sum(tl.exp(v - v_max), axis=0))
    log_p = (v - v_max) - v_log_sum
    log_q = (u - u_max) - u_log_sum
    # classes of zero teacher probability (selected, padded, -inf logits) contribute 0
    kl_rest = tl.sum(tl.exp(log_p) * tl.where(v == -float("inf"), 0.0, log_p - log_q), axis=0)

    # Cross-entropy at temperature 1, and whether the row counts.
    if HAS_TARGET:
        y = tl.load(target_ptr + row)
        counted = y != ignore_index
        s_max = tl.max(s, axis=0)
        s_log_sum = tl.log(tl.sum(tl.exp(s - s_max), axis=0))
        ce = (s_max - tl.sum(tl.where(cols == y, s, 0.0), axis=0)) + s_log_sum
    else:
        counted = True
        ce = 0.0
    _store_row(loss_ptr, parts_ptr, row, counted, ce, local, T * T * kl_rest, ce_weight, alpha,
               beta)

    # Gradients: the remaining classes in one full-row store, the top-k classes in a second
    # store to their k addresses (the two never overlap).
    in_top = ranks < k
    scale = _grad_scale(grad_scale_ptr, SCALE_GRAD)
    grad_s, grad_t = _rest_grads(s, t, rest, u_max, u_log_sum, v_max, v_log_sum, kl_rest, T,
                                 beta)
    if STUDENT_GRAD:
        if HAS_TARGET:
            grad_s += _ce_grad(s, cols, y, s_max, s_log_sum, ce_weight)
            grad_top_s += _ce_grad(top_s, top_idx, y, s_max, s_log_sum, ce_weight)
        _store_grad(grad_s_ptr + row * stride_gs_row, cols, grad_s, scale, counted, rest)
        _store_grad(grad_s_ptr + row * stride_gs_row, top_idx, grad_top_s, scale, counted,
                    in_top)
    if TEACHER_GRAD:
        _store_grad(grad_t_ptr + row * stride_gt_row, cols, grad_t, scale, counted, rest)
        _store_grad(grad_t_ptr + row * stride_gt_row, top_idx, grad_top_t, scale, counted,
                    in_top)


def ldrld_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    config: LossConfig,
    need_student_grad: bool,
    need_teacher_grad: bool,
    grad_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Same contract as ``torch_path.ldrld_rows``: row losses (float32), per-row parts and
    the gradients of the row losses (times ``grad_scale``) in the inputs' dtypes, from one
    kernel launch."""
    rows, num_classes = student.shape
    if num_classes > MAX_FUSED:
        from ldrld_kernels import triton_chunked

        return triton_chunked.ldrld_rows(student, teacher, target, config, need_student_grad,
                                         need_teacher_grad, grad_scale)

    row_loss, parts, grad_s, grad_t = allocate_outputs(student, teacher, need_student_grad,
                                                       need_teacher_grad)
    if rows == 0:
        return row_loss, parts, grad_s, grad_t
    block = triton.next_power_of_2(num_classes)
    _ldrld_fused_kernel[(rows,)](
        row_loss, parts,
        grad_s if grad_s is not None else row_loss,
        grad_t if grad_t is not None else row_loss,
        student, teacher, target if target is not None else row_loss,
        grad_scale if grad_scale is not None else row_loss,
        student.stride(0), student.stride(1), teacher.stride(0), teacher.stride(1),
        num_classes if grad_s is None else grad_s.stride(0),
        num_classes if grad_t is None else grad_t.stride(0),
        num_classes, config.k,
        config.temperature, config.alpha, config.beta, config.ce_weight,
        config.adw_scale, config.adw_decay, config.adw_offset, config.ignore_index,
        HAS_TARGET=target is not None, RANK_BY_TEACHER=config.rank_by == "teacher",
        STUDENT_GRAD=grad_s is not None, TEACHER_GRAD=grad_t is not None,
        SCALE_GRAD=grad_scale is not None, BLOCK_C=block, K_PAD=triton.next_power_of_2(config.k),
        num_warps=num_warps_for(block),
    )
    return row_loss, parts, grad_s, grad_t
