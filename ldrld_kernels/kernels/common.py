"""Triton device functions of the LDRLD kernels: base-2 math and the local term.

With u = s / T and v = t / T, the top-k classes pi and the remaining classes R:
    local = T^2 (sum_{i<j} w_ij KL_ij + KL(softmax(v_pi) || softmax(u_pi))) / (k(k-1)/2 + 1)
    KL_ij = sig(a) (logsig(a) - logsig(b)) + sig(-a) (logsig(-a) - logsig(-b)),
            a = v_pi_i - v_pi_j, b = u_pi_i - u_pi_j
    rntk  = T^2 KL(softmax(v_R) || softmax(u_R))
Gradients, per group G with p = softmax(v_G), q = softmax(u_G):
    d(T^2 KL) / d s_c = T (q_c - p_c),        d(T^2 KL) / d t_c = T p_c (log(p_c / q_c) - KL);
    a pair gives T (sig(b) - sig(a)) to s_pi_i and the opposite to s_pi_j;
    d CE / d s_c = softmax(s)_c - [c == y].
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)
# The interpreter has no libdevice: it takes the precise log2 where compiled code takes the
# hardware's (MUFU.LG2, relative error < 2^-22), 1 instruction instead of libdevice's 25.
INTERPRETING = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _log2(x):
    if INTERPRETING:
        return tl.log2(x)
    return libdevice.fast_log2f(x)


@triton.jit
def _reciprocal(x):
    """1 / x to about 1 ulp with the hardware's reciprocal (the precise division is ten
    instructions)."""
    if INTERPRETING:
        return 1.0 / x
    return libdevice.fast_dividef(1.0, x)


@triton.jit
def _local_term_rows(top_s, top_t, settings, K_PAD: tl.constexpr,
                     TEACHER_GRAD: tl.constexpr = True):
    """The local term of each row from the logits of its top-k classes in rank order
    ([ROWS, K_PAD], entries past k ignored), and alpha times its gradients at those
    classes ([ROWS, K_PAD]); the teacher's only with TEACHER_GRAD (else zeros). ``settings``:
    ``config.LossNumbers``. Worked in base 2 (exp2, log2: one hardware instruction each), the
    KLs converted to nats."""
    k, T, alpha = settings.k, settings.temperature, settings.alpha
    adw_scale, adw_decay, adw_offset = settings.adw_scale, settings.adw_decay, settings.adw_offset
    ranks = tl.arange(0, K_PAD)
    in_top = (ranks < k)[None, :]
    c2 = LOG2E / T
    u_top = top_s * c2
    v_top = top_t * c2

    # Dense pairs as a [ROWS, K_PAD, K_PAD] tile, weighted by ADW (0 outside i < j < k).
    rank_i = (ranks + 1).to(tl.float32)[:, None]
    rank_j = (ranks + 1).to(tl.float32)[None, :]
    is_pair = (ranks[:, None] < ranks[None, :]) & in_top
    w = tl.where(is_pair, adw_scale * tl.exp(-adw_decay * (rank_i + rank_j))
                 / (adw_offset + tl.abs(rank_i - rank_j)), 0.0)[None, :, :]
    a = v_top[:, :, None] - v_top[:, None, :]
    b = u_top[:, :, None] - u_top[:, None, :]
    # sig(x) and logsig(a) - logsig(b) from 2^-|x|, with one log of a ratio in [1/2, 2]
    e_a = tl.exp2(-tl.abs(a))
    e_b = tl.exp2(-tl.abs(b))
    r_a = _reciprocal(1.0 + e_a)
    r_b = _reciprocal(1.0 + e_b)
    p_pair = tl.where(a >= 0, r_a, e_a * r_a)
    log_ratio_i = (tl.minimum(a, 0.0) - tl.minimum(b, 0.0)) - _log2((1.0 + e_a) * r_b)
    # logsig(-x) = logsig(x) - x, so the second half of the pair KL is -sig(-a) (a - b)
    kl_pair = log_ratio_i - (1.0 - p_pair) * (a - b)
    pairs = LN2 * tl.sum(tl.sum(w * kl_pair, axis=2), axis=1)

    # The top-k group with weight 1.
    u_group = tl.where(in_top, u_top, -float("inf"))
    v_group = tl.where(in_top, v_top, -float("inf"))
    u_max = tl.max(u_group, axis=1)[:, None]
    v_max = tl.max(v_group, axis=1)[:, None]
    log_q_top = u_group - u_max - _log2(tl.sum(tl.exp2(u_group - u_max), axis=1))[:, None]
    log_p_top = v_group - v_max - _log2(tl.sum(tl.exp2(v_group - v_max), axis=1))[:, None]
    p_top = tl.exp2(log_p_top)
    log_ratio_top = tl.where(in_top, log_p_top - log_q_top, 0.0)
    kl_top = LN2 * tl.sum(p_top * log_ratio_top, axis=1)

    num_groups = (k * (k - 1) // 2 + 1).to(tl.float32)
    local = T * T * (pairs + kl_top) / num_groups
    scale = alpha * T / num_groups
    pair = w * (tl.where(b >= 0, r_b, e_b * r_b) - p_pair)
    grad_s = scale * (tl.sum(pair, axis=2) - tl.sum(pair, axis=1) + tl.exp2(log_q_top) - p_top)
    grad_t = tl.zeros_like(grad_s)
    if TEACHER_GRAD:
        pair = w * p_pair * (LN2 * (log_ratio_i - kl_pair))
        grad_t = scale * (tl.sum(pair, axis=2) - tl.sum(pair, axis=1)
                          + p_top * (LN2 * log_ratio_top - kl_top[:, None]))
    return local, grad_s, grad_t


@triton.jit
def _grad_scale(grad_scale_ptr, SCALE_GRAD: tl.constexpr):
    """The factor every stored gradient is multiplied by (1 / rows counted for a mean)."""
    if SCALE_GRAD:
        return tl.load(grad_scale_ptr).to(tl.float32)
    return 1.0
