"""Fused Triton kernel: one program per row computes the LDRLD row loss and its gradients.

Per row, with u = s / T, v = t / T, the top-k classes pi_1..pi_k (by s, or by t) and the
other classes R (SPEC.md for the full statement):
    KL_ij  = sig(a) (logsig(a) - logsig(b)) + sig(-a) (logsig(-a) - logsig(-b)),
             a = v_pi_i - v_pi_j, b = u_pi_i - u_pi_j                       (no softmax)
    local  = T^2 (sum_{i<j} w_ij KL_ij + KL(softmax(v_pi) || softmax(u_pi))) / (k(k-1)/2 + 1)
    rntk   = T^2 KL(softmax(v_R) || softmax(u_R))                  (R excludes pi exactly)
    row    = ce_weight * (logsumexp(s) - s_y) + alpha * local + beta * rntk
Gradients, per group G with p = softmax(v_G), q = softmax(u_G):
    d(T^2 KL) / d s_c = T (q_c - p_c)          d(T^2 KL) / d t_c = T p_c (log(p_c / q_c) - KL)
    a pair gives T (sig(b) - sig(a)) to s_pi_i and the opposite to s_pi_j
    d CE / d s_c = softmax(s)_c - [c == y]
The kernel writes the loss and, in the same pass, the gradients of the row loss; backward
only scales them by the upstream gradient (api._LDRLDFunction).
"""

from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl

from ldrld_kernels import torch_path
from ldrld_kernels.config import LossConfig

# One program holds the whole row in registers (two float32 vectors of BLOCK_C plus a few
# masks). Past 16,384 classes that spills badly; larger rows need the chunked kernel.
MAX_FUSED = 16384


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _ldrld_fused_kernel(
    # pointers
    loss_ptr, parts_ptr, grad_s_ptr, grad_t_ptr,
    student_ptr, teacher_ptr, target_ptr,
    # strides
    stride_s_row, stride_s_col, stride_t_row, stride_t_col, stride_gs_row, stride_gt_row,
    # sizes
    C, k,
    # runtime scalars
    T, alpha, beta, ce_weight, adw_scale, adw_decay, adw_offset, ignore_index,
    # flags
    HAS_TARGET: tl.constexpr, RANK_BY_TEACHER: tl.constexpr, STUDENT_GRAD: tl.constexpr,
    TEACHER_GRAD: tl.constexpr, BLOCK_C: tl.constexpr, K_PAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    in_row = cols < C
    s = tl.load(student_ptr + row * stride_s_row + cols * stride_s_col, mask=in_row,
                other=-float("inf")).to(tl.float32)
    t = tl.load(teacher_ptr + row * stride_t_row + cols * stride_t_col, mask=in_row,
                other=-float("inf")).to(tl.float32)

    # 1. Top-k: k rounds of a (max, leftmost index) reduction over the row already in
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
    for r in range(k):
        _, pick = tl.max(tl.where(taken, -float("inf"), key), axis=0, return_indices=True,
                         return_indices_tie_break_left=True)
        here = cols == pick
        taken = taken | here
        top_idx = tl.where(ranks == r, pick, top_idx)
        top_s = tl.where(ranks == r, tl.sum(tl.where(here, s, 0.0), axis=0), top_s)
        top_t = tl.where(ranks == r, tl.sum(tl.where(here, t, 0.0), axis=0), top_t)
    in_top = ranks < k
    u_top = top_s / T
    v_top = top_t / T

    # 2-3. Dense pairs as a (K_PAD, K_PAD) tile, weighted by ADW (0 outside i < j < k).
    rank_i = (ranks + 1).to(tl.float32)[:, None]
    rank_j = (ranks + 1).to(tl.float32)[None, :]
    is_pair = (ranks[:, None] < ranks[None, :]) & in_top[None, :]
    w = tl.where(is_pair, adw_scale * tl.exp(-adw_decay * (rank_i + rank_j))
                 / (adw_offset + tl.abs(rank_i - rank_j)), 0.0)
    a = v_top[:, None] - v_top[None, :]
    b = u_top[:, None] - u_top[None, :]
    p_pair = tl.sigmoid(a)
    log_ratio_i = _logsigmoid(a) - _logsigmoid(b)
    kl_pair = p_pair * log_ratio_i + tl.sigmoid(-a) * (_logsigmoid(-a) - _logsigmoid(-b))
    pairs = tl.sum(tl.sum(w * kl_pair, axis=1), axis=0)

    # 4. The top-k group.
    u_group = tl.where(in_top, u_top, -float("inf"))
    v_group = tl.where(in_top, v_top, -float("inf"))
    u_max = tl.max(u_group, axis=0)
    v_max = tl.max(v_group, axis=0)
    log_q_top = u_group - u_max - tl.log(tl.sum(tl.exp(u_group - u_max), axis=0))
    log_p_top = v_group - v_max - tl.log(tl.sum(tl.exp(v_group - v_max), axis=0))
    p_top = tl.exp(log_p_top)
    log_ratio_top = tl.where(in_top, log_p_top - log_q_top, 0.0)
    kl_top = tl.sum(p_top * log_ratio_top, axis=0)
    num_groups = (k * (k - 1) // 2 + 1).to(tl.float32)
    local = T * T * (pairs + kl_top) / num_groups

    # 6. Remaining classes: the selected ones excluded exactly, not subtracted from a sum.
    rest = in_row & ~taken
    u = tl.where(rest, s / T, -float("inf"))
    v = tl.where(rest, t / T, -float("inf"))
    u_max = tl.max(u, axis=0)
    v_max = tl.max(v, axis=0)
    log_q = u - u_max - tl.log(tl.sum(tl.exp(u - u_max), axis=0))
    log_p = v - v_max - tl.log(tl.sum(tl.exp(v - v_max), axis=0))
    p = tl.exp(log_p)
    # classes of zero teacher probability (selected, padded, -inf logits) contribute 0
    log_ratio = tl.where(v == -float("inf"), 0.0, log_p - log_q)
    kl_rest = tl.sum(p * log_ratio, axis=0)
    rntk = T * T * kl_rest

    # 7. Cross-entropy at temperature 1, and whether the row counts.
    if HAS_TARGET:
        y = tl.load(target_ptr + row)
        counted = y != ignore_index
        s_max = tl.max(s, axis=0)
        lse = s_max + tl.log(tl.sum(tl.exp(s - s_max), axis=0))
        ce = lse - tl.sum(tl.where(cols == y, s, 0.0), axis=0)
    else:
        counted = True
        ce = 0.0
    row_loss = ce_weight * ce + alpha * local + beta * rntk
    tl.store(loss_ptr + row, tl.where(counted, row_loss, 0.0))
    tl.store(parts_ptr + row * 3 + 0, tl.where(counted, ce, 0.0))
    tl.store(parts_ptr + row * 3 + 1, tl.where(counted, local, 0.0))
    tl.store(parts_ptr + row * 3 + 2, tl.where(counted, rntk, 0.0))

    # Gradients: the remaining classes in one full-row store, the top-k classes in a second
    # store to their k addresses (the two never overlap).
    local_scale = alpha * T / num_groups
    rest_scale = beta * T
    if STUDENT_GRAD:
        grad = rest_scale * (tl.exp(log_q) - p)
        pair = w * (tl.sigmoid(b) - p_pair)
        grad_top = local_scale * (tl.sum(pair, axis=1) - tl.sum(pair, axis=0)
                                  + tl.exp(log_q_top) - p_top)
        if HAS_TARGET:
            grad += ce_weight * (tl.exp(s - lse) - tl.where(cols == y, 1.0, 0.0))
            grad_top += ce_weight * (tl.exp(top_s - lse) - tl.where(top_idx == y, 1.0, 0.0))
        grad_row = grad_s_ptr + row * stride_gs_row
        out_ty = grad_s_ptr.dtype.element_ty
        tl.store(grad_row + cols, tl.where(counted, grad, 0.0).to(out_ty), mask=rest)
        tl.store(grad_row + top_idx, tl.where(counted, grad_top, 0.0).to(out_ty), mask=in_top)
    if TEACHER_GRAD:
        grad = rest_scale * p * (log_ratio - kl_rest)
        pair = w * p_pair * (log_ratio_i - kl_pair)
        grad_top = local_scale * (tl.sum(pair, axis=1) - tl.sum(pair, axis=0)
                                  + p_top * (log_ratio_top - kl_top))
        grad_row = grad_t_ptr + row * stride_gt_row
        out_ty = grad_t_ptr.dtype.element_ty
        tl.store(grad_row + cols, tl.where(counted, grad, 0.0).to(out_ty), mask=rest)
        tl.store(grad_row + top_idx, tl.where(counted, grad_top, 0.0).to(out_ty), mask=in_top)


def _num_warps(block: int) -> int:
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


_warned_large = False


def ldrld_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    config: LossConfig,
    need_student_grad: bool,
    need_teacher_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Same contract as ``torch_path.ldrld_rows``: row losses (float32), per-row parts and
    the gradients of the row losses in the inputs' dtypes, from one kernel launch."""
    global _warned_large
    rows, num_classes = student.shape
    if num_classes > MAX_FUSED:
        if not _warned_large:
            warnings.warn(
                f"ldrld_loss: the fused Triton kernel holds rows of up to {MAX_FUSED} classes; "
                f"C = {num_classes} runs on the PyTorch path instead", stacklevel=4)
            _warned_large = True
        return torch_path.ldrld_rows(student, teacher, target, config, need_student_grad,
                                     need_teacher_grad)

    device = student.device
    row_loss = torch.empty(rows, dtype=torch.float32, device=device)
    parts = torch.empty(rows, 3, dtype=torch.float32, device=device)
    grad_s = torch.empty_like(student, memory_format=torch.contiguous_format) \
        if need_student_grad else None
    grad_t = torch.empty_like(teacher, memory_format=torch.contiguous_format) \
        if need_teacher_grad else None
    if rows == 0:
        return row_loss, parts, grad_s, grad_t
    block = triton.next_power_of_2(num_classes)
    _ldrld_fused_kernel[(rows,)](
        row_loss, parts,
        grad_s if grad_s is not None else row_loss,
        grad_t if grad_t is not None else row_loss,
        student, teacher, target if target is not None else row_loss,
        student.stride(0), student.stride(1), teacher.stride(0), teacher.stride(1),
        num_classes if grad_s is None else grad_s.stride(0),
        num_classes if grad_t is None else grad_t.stride(0),
        num_classes, config.k,
        config.temperature, config.alpha, config.beta, config.ce_weight,
        config.adw_scale, config.adw_decay, config.adw_offset, config.ignore_index,
        HAS_TARGET=target is not None, RANK_BY_TEACHER=config.rank_by == "teacher",
        STUDENT_GRAD=grad_s is not None, TEACHER_GRAD=grad_t is not None,
        BLOCK_C=block, K_PAD=triton.next_power_of_2(config.k),
        num_warps=_num_warps(block),
    )
    return row_loss, parts, grad_s, grad_t
