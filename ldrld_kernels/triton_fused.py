"""Fused Triton kernel: the LDRLD row losses and their gradients in one launch for rows of up
to ``policy.MAX_FUSED`` classes, and in two launches per wave of rows for wider ones.

Layout. A program takes ROWS rows as a [ROWS, LANES, VEC] tile: LANES threads per row, each
reading VEC consecutive classes (one 16-byte access) per chunk of LANES x VEC classes.
Positions in a row are shifted by h = (row start mod VEC) when rows are not 16-byte aligned
(odd vocabularies such as 50,257), so that every chunk but the first and the last is
aligned: class c sits at position c + h. Each thread keeps running statistics of its own
classes and combines them with the row's other threads once per row: no reduction runs per
chunk. The row is streamed three times, the second and third reads from L2:

1. Selection. Positions come in groups of VEC; a group's key is its best ranking logit,
   groups ordered by position (ties to the smaller group, i.e. the smaller class). The exact
   top-k classes lie in the k groups with the best keys: if a top-k class c sat in a group
   g ranked below k others, those k groups' best classes would all rank above c. While
   streaming, each thread keeps its KPL best groups, sorted, and the best key that fell off
   its list; the row's k best groups are the best k of the threads' lists, exact unless a
   key that fell off ranks with them. Then (about 0.1% of rows of random logits; the
   profile simulates it) the program redoes the selection exactly: a streaming round per
   rank, each the best group ranked after the previous winner, from the rank after its
   fewest certain winners (those above every key that fell off a list: at least KPL when one
   thread's list overflowed) to k. The k winning groups (k x VEC classes,
   gathered from L1/L2) give the exact top-k in rank order by k rounds of (max, smaller
   index).
2. Statistics of the remaining classes. A winning group is left out with one comparison of
   its key with the k-th winner's; its classes that were not selected are added back per
   row from the gathered groups. With a = x log2(e) / T - m in base 2 (one fma), each thread
   keeps for its row z_u = sum 2^a_u, z_v = sum 2^a_v, w = sum 2^a_v (a_v - a_u) and the
   cross-entropy's z_s = sum 2^(s log2 e - m_s), against offsets m that are whole numbers:
   moving one is an exponent shift, not an exponential, and with logits of 1e4 the
   exponents keep every bit. When T is 1, 2 or 4, 2^(s log2 e - T m_u) = (2^a_u)^T: the
   cross-entropy needs no exponential of its own. Per row
       KL_rest = ln 2 (w / z_v - (log2 z_v - log2 z_u))      (a against the row's offsets)
       CE = ln 2 (m_s + log2 z_s) - s_y.
3. Gradients. Every class of the row is written by one vectorized sweep,
       d/ds_c = beta T (2^a_u / z_u - 2^a_v / z_v) + ce_weight softmax(s)_c
       d/dt_c = beta T p_c (ln 2 (a_v - a_u) + ln 2 (log2 z_u - log2 z_v) - KL_rest),
   rows that do not count getting zeros; then, after a block barrier, the k selected
   classes and the target get their own values (the local term,
   ``triton_common._local_term_rows``, and the one-hot of the cross-entropy).
Gradients are stored already multiplied by the mean's 1 / count; backward only scales them
(``api._LDRLDFunction``) and skips that when the upstream gradient is 1.

Wide rows (past ``policy.MAX_FUSED``: 128K-262K vocabularies) run the same code split over
several programs per row (``policy.split_launch``: each split whole chunks, at least
MIN_SPLIT_CHUNKS of them), in waves of rows whose logits fit in half the L2, two launches
per wave (SPLIT_PHASE):
1. each split streams steps 1 and 2 over its chunks: its k best groups (the row's top-k
   classes lie in the union of the splits' k best groups, by the argument of step 1) and the
   sums of its other classes, written to its record in the workspace. The last of the row's
   programs to finish (a release-acquire ticket per row) merges the records: sums combined
   with their offsets, the exact top-k among the splits' winning groups, the rest of those
   groups' classes added to the sums; it stores the row's loss and, in the row record, what
   the gradients need (per-row factors, the top-k and target gradients).
2. each split streams step 3 over its chunks from the row record, then writes the selected
   classes and the target that lie in it.
Phase 3 is phase 1 without the merge, for a caller that merges the records itself and writes
the row record (``triton_parallel``: a rank's slice of the classes, whose top-k depends on
the other ranks).
HBM traffic (``policy.hbm_bytes_per_element``): each input read once and each gradient
written once, when the wave's second and third reads hit in L2 (it holds half the L2 by
construction); per-row work is done once per split (the selection rounds) or once per row
(the merge). Extra memory: the workspace, wave rows x (splits x (8 + K_PAD) + 16 + 3 K_PAD)
float32, whatever the number of rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ldrld_kernels.config import LossConfig
from ldrld_kernels.hardware import hardware_of, on_device
from ldrld_kernels.policy import ROW_MODELS, FusedLaunch, launch_for
from ldrld_kernels.triton_common import (
    LN2,
    LOG2E,
    _grad_scale,
    _local_term_rows,
    _log2,
    allocate_outputs,
)

NO_GROUP = tl.constexpr(2**30)  # group id of an empty candidate slot (ranks last)
# Wide rows' workspace, float32 words per row of a wave: each split's record, STATS words of
# sums (m_u, z_u, m_v, z_v, w, m_s, z_s, unused) and the ids of its k best groups (int32 bits,
# NO_GROUP past them); then the row record, ROW_WORDS words (counted, m_u, m_v, m_s, w_q, w_p,
# w_ce, t_shift, the target's position, whether it needs its own gradient and that gradient,
# unused, and the int32 ticket at TICKET), the top-k classes (int32 bits, C past k) and their
# student and teacher gradients.
STATS = tl.constexpr(8)
ROW_WORDS = tl.constexpr(16)
TICKET = tl.constexpr(15)
# the words of a split's record, then of the row record
SPLIT_M_U, SPLIT_Z_U, SPLIT_M_V, SPLIT_Z_V, SPLIT_W, SPLIT_M_S, SPLIT_Z_S = (
    tl.constexpr(slot) for slot in range(7))
(ROW_COUNTED, ROW_M_U, ROW_M_V, ROW_M_S, ROW_W_Q, ROW_W_P, ROW_W_CE, ROW_T_SHIFT, ROW_Y_POS,
 ROW_Y_REST, ROW_G_Y) = (tl.constexpr(slot) for slot in range(11))


# ---- Loading ---------------------------------------------------------------------------------


@triton.jit
def _positions(chunk, LANES: tl.constexpr, VEC: tl.constexpr):
    """Positions of one chunk as a [1, LANES, VEC] tile."""
    lane = tl.arange(0, LANES)[None, :, None]
    return chunk * (LANES * VEC) + lane * VEC + tl.arange(0, VEC)[None, None, :]


@triton.jit
def _load(ptr, base, pos, mask, stride_col):
    """Float32 logits at positions ``pos`` of rows starting at ``base`` (position 0), -inf
    outside ``mask``; 64-bit offsets."""
    return tl.load(ptr + base + pos.to(tl.int64) * stride_col, mask=mask,
                   other=-float("inf")).to(tl.float32)


@triton.jit
def _load_chunk(ptr, base, chunk, shift, C, stride_col, LANES: tl.constexpr,
                VEC: tl.constexpr, MASKED: tl.constexpr, PACKED: tl.constexpr,
                VECTOR: tl.constexpr):
    """Chunk ``chunk`` of the rows' logits in float32, [ROWS, LANES, VEC], -inf outside the
    rows. A full chunk (MASKED False) lies inside every row of the tile (rows past the end
    were clamped to the last one): no mask, no fill value. A masked chunk (the first when
    shifted, the last ones) with VECTOR rows (aligned 16-byte groups, contiguous classes)
    reads every group that holds a class of the row whole, 16 bytes at once, and then
    selects: a 16-byte aligned block that holds a valid element cannot cross a page, so the
    few bytes read past a row's ends are harmless. PACKED: contiguous bfloat16 read as
    32-bit words of two classes, widened with one shift or one and-mask per class (a bfloat16
    is the high half of a float32)."""
    pos = _positions(chunk, LANES, VEC)
    if MASKED:
        inside = (pos >= shift) & (pos < C + shift)
        if VECTOR:
            group = chunk * LANES + tl.arange(0, LANES)[None, :, None]
            touched = (group * VEC < C + shift) & (group * VEC + VEC > shift)
            x = tl.load(ptr + base + pos, mask=touched, other=-float("inf")).to(tl.float32)
            x = tl.where(inside, x, -float("inf"))
        else:
            x = _load(ptr, base, pos, inside, stride_col)
    elif PACKED:
        words = chunk * (LANES * VEC // 2) + tl.arange(0, LANES)[None, :, None] * (VEC // 2) + \
            tl.arange(0, VEC // 2)[None, None, :]
        w = tl.load(ptr.to(tl.pointer_type(tl.int32)) + base // 2 + words)
        low = (w << 16).to(tl.float32, bitcast=True)
        high = (w & -65536).to(tl.float32, bitcast=True)
        x = tl.reshape(tl.join(low, high), [w.shape[0], LANES, VEC])
    else:
        x = tl.load(ptr + base + pos.to(tl.int64) * stride_col).to(tl.float32)
    return x


@triton.jit
def _load_groups(ptr, base, groups, valid, shift, C, stride_col, VEC: tl.constexpr,
                 VECTOR: tl.constexpr):
    """The classes of the groups ``groups`` ([ROWS, N], ``valid`` ones only) as a
    [ROWS, N, VEC] tile of float32 logits, -inf outside the rows; with VECTOR rows, whole
    16-byte groups (see ``_load_chunk``)."""
    pos = tl.where(valid, groups, 0)[:, :, None] * VEC + tl.arange(0, VEC)[None, None, :]
    inside = valid[:, :, None] & (pos >= shift) & (pos < C + shift)
    if VECTOR:
        x = tl.load(ptr + base + pos, mask=valid[:, :, None], other=-float("inf"))
        return tl.where(inside, x.to(tl.float32), -float("inf"))
    return _load(ptr, base, pos, inside, stride_col)


# ---- Selection -------------------------------------------------------------------------------


@triton.jit
def _insert(v0, g0, v1, g1, v2, g2, v3, g3, v4, g4, dropped, x, gx, KPL: tl.constexpr):
    """Insert group key (x, gx) into a thread's sorted list of its KPL (2 to 5) best groups,
    and keep the best value that fell off the list in ``dropped``. Groups arrive in
    increasing id, so a tie never displaces an earlier group: only x > v counts."""
    if KPL == 5:
        dropped = tl.maximum(dropped, tl.minimum(x, v4))
        b4 = x > v4
        b3 = x > v3
        v4, g4 = tl.where(b3, v3, tl.where(b4, x, v4)), tl.where(b3, g3, tl.where(b4, gx, g4))
    elif KPL == 4:
        dropped = tl.maximum(dropped, tl.minimum(x, v3))
    elif KPL == 3:
        dropped = tl.maximum(dropped, tl.minimum(x, v2))
    else:
        dropped = tl.maximum(dropped, tl.minimum(x, v1))
    b3 = x > v3
    b2 = x > v2
    if KPL >= 4:
        v3, g3 = tl.where(b2, v2, tl.where(b3, x, v3)), tl.where(b2, g2, tl.where(b3, gx, g3))
    b1 = x > v1
    b0 = x > v0
    if KPL >= 3:
        v2, g2 = tl.where(b1, v1, tl.where(b2, x, v2)), tl.where(b1, g1, tl.where(b2, gx, g2))
    v1, g1 = tl.where(b0, v0, tl.where(b1, x, v1)), tl.where(b0, g0, tl.where(b1, gx, g1))
    v0, g0 = tl.where(b0, x, v0), tl.where(b0, gx, g0)
    return v0, g0, v1, g1, v2, g2, v3, g3, v4, g4, dropped


@triton.jit
def _select_step(ptr, base, chunk, shift, C, stride_col, v0, g0, v1, g1, v2, g2, v3, g3, v4,
                 g4, dropped, LANES: tl.constexpr, VEC: tl.constexpr, KPL: tl.constexpr,
                 MASKED: tl.constexpr, PACKED: tl.constexpr, VECTOR: tl.constexpr):
    key = _load_chunk(ptr, base, chunk, shift, C, stride_col, LANES, VEC, MASKED, PACKED,
                      VECTOR)
    group = chunk * LANES + tl.arange(0, LANES)[None, :]
    return _insert(v0, g0, v1, g1, v2, g2, v3, g3, v4, g4, dropped, tl.max(key, axis=2), group,
                   KPL)


@triton.jit
def _after_step(ptr, base, chunk, shift, C, stride_col, theta_v, theta_g, best_v, best_g,
                LANES: tl.constexpr, VEC: tl.constexpr, MASKED: tl.constexpr,
                PACKED: tl.constexpr, VECTOR: tl.constexpr):
    """One chunk of an exact-selection round: each thread's best group that ranks after
    (theta_v, theta_g), ties to the smaller group."""
    key = _load_chunk(ptr, base, chunk, shift, C, stride_col, LANES, VEC, MASKED, PACKED,
                      VECTOR)
    gm = tl.max(key, axis=2)
    group = chunk * LANES + tl.arange(0, LANES)[None, :]
    after = (gm < theta_v[:, None]) | ((gm == theta_v[:, None]) & (group > theta_g[:, None]))
    better = after & (gm > best_v)
    return tl.where(better, gm, best_v), tl.where(better, group, best_g)


@triton.jit
def _best_group(values, groups):
    """Per row: the best (value, group) of a [ROWS, N] tile, ties to the smaller group."""
    best = tl.max(values, axis=1)
    return best, tl.min(tl.where(values == best[:, None], groups, NO_GROUP), axis=1)


@triton.jit
def _top_classes(key, classes, valid, k, C, K_PAD: tl.constexpr):
    """The k best of the ``valid`` classes of a [ROWS, A, B] tile (unique class ids, ranked
    by ``key``, ties to the smaller class) in rank order, [ROWS, K_PAD] (C past the k-th),
    and which valid classes are left: k rounds of (max, smaller class)."""
    ranks = tl.arange(0, K_PAD)[None, :]
    top_c = tl.full([key.shape[0], K_PAD], 0, tl.int32) + C
    for r in range(k):  # trips: k
        best = tl.max(tl.max(tl.where(valid, key, -float("inf")), axis=2), axis=1)
        pick = tl.min(tl.min(tl.where(valid & (key == best[:, None, None]), classes, C),
                             axis=2), axis=1)
        valid = valid & (classes != pick[:, None, None])
        top_c = tl.where(ranks == r, pick[:, None], top_c)
    return top_c, valid


@triton.jit
def _ranks_at_or_above(value, group, theta_value, theta_group):
    """Whether group key (value, group) ranks at or above (theta_value, theta_group)."""
    return (value > theta_value) | ((value == theta_value) & (group <= theta_group))


# ---- Statistics ------------------------------------------------------------------------------


@triton.jit
def _pow2_int(d):
    """2^d for a float holding a whole number d <= 0, exactly and without an exponential:
    the float whose exponent field is d + 127 (0 below 2^-126)."""
    d = tl.maximum(d, -127.0).to(tl.int32)
    return ((d + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _rescale(offset, group_max):
    """Move a whole-number offset up to cover ``group_max``: (new offset, the factor that
    rescales sums taken against the old one)."""
    new = tl.maximum(offset, tl.math.ceil(group_max))
    return new, _pow2_int(offset - new)


@triton.jit
def _move_w(w, z_v, off_u, off_v, new_u, new_v):
    """``w`` = sum 2^a_v (a_v - a_u), taken against offsets (off_u, off_v) with z_v =
    sum 2^a_v, moved to (new_u, new_v): each a_v - a_u changes by the same whole number and
    each 2^a_v by the same power of two."""
    return (w - ((new_v - off_v) - (new_u - off_u)) * z_v) * _pow2_int(off_v - new_v)


@triton.jit
def _int_power(x, T_POW: tl.constexpr):
    """x^T_POW for T_POW = 1, 2, 4, by multiplication."""
    if T_POW == 2:
        x = x * x
    elif T_POW == 4:
        x = x * x
        x = x * x
    return x


@triton.jit
def _stats_step(student_ptr, teacher_ptr, s_base, t_base, chunk, shift, C, stride_s_col,
                stride_t_col, c2, theta_v, theta_g, off_u, off_v, off_s, z_u, z_v, w, z_s,
                HAS_TARGET: tl.constexpr, RANK_BY_TEACHER: tl.constexpr,
                LANES: tl.constexpr, VEC: tl.constexpr, T_POW: tl.constexpr,
                MASKED: tl.constexpr, S_PACKED: tl.constexpr, T_PACKED: tl.constexpr,
                VECTOR: tl.constexpr):
    """One chunk of the remaining-class statistics. ``c2`` is log2(e) / T; ``w`` sums
    2^a_v (a_v - a_u) against the offsets of the moment, so moving them moves w by z_v times
    the change of off_v - off_u."""
    s = _load_chunk(student_ptr, s_base, chunk, shift, C, stride_s_col, LANES, VEC, MASKED,
                    S_PACKED, VECTOR)
    t = _load_chunk(teacher_ptr, t_base, chunk, shift, C, stride_t_col, LANES, VEC, MASKED,
                    T_PACKED, VECTOR)
    gm_s = tl.max(s, axis=2)
    gm_t = tl.max(t, axis=2)
    group = chunk * LANES + tl.arange(0, LANES)[None, :]
    winner = _ranks_at_or_above(gm_t if RANK_BY_TEACHER else gm_s, group, theta_v, theta_g)
    gm_s = tl.where(winner, -float("inf"), gm_s)
    # (_rescale inlined: both offsets, then both factors, compiles to 0.1-0.2 instructions per
    # element fewer than _rescale twice)
    new_u = tl.maximum(off_u, tl.math.ceil(gm_s * c2))
    new_v = tl.maximum(off_v, tl.math.ceil(tl.where(winner, -float("inf"), gm_t) * c2))
    scale_u = _pow2_int(off_u - new_u)
    scale_v = _pow2_int(off_v - new_v)
    w = _move_w(w, z_v, off_u, off_v, new_u, new_v)
    off_u, off_v = new_u, new_v
    # the exponent with one rounding (fma): rounding x c2 first would cost 1e-3 per exponent
    # at logits of 1e4
    a_u = tl.fma(s, c2, -off_u[:, :, None])
    a_v = tl.fma(t, c2, -off_v[:, :, None])
    e_u = tl.exp2(a_u)
    e_v = tl.exp2(a_v)
    # padding (-inf in both) has e_v = 0 and a_v - a_u = nan: max() drops the nan
    group_w = tl.sum(e_v * tl.maximum(a_v - a_u, -3.0e38), axis=2)
    z_u = z_u * scale_u + tl.where(winner, 0.0, tl.sum(e_u, axis=2))
    z_v = z_v * scale_v + tl.where(winner, 0.0, tl.sum(e_v, axis=2))
    w = w + tl.where(winner, 0.0, group_w)
    if HAS_TARGET:
        if T_POW == 0:
            # an offset of its own and an exponential per class
            off_s, scale_s = _rescale(off_s, gm_s * LOG2E)
            e_s = tl.exp2(tl.fma(s, LOG2E, -off_s[:, :, None]))
        else:
            off_s = off_u * T_POW
            scale_s = _int_power(scale_u, T_POW)
            e_s = _int_power(e_u, T_POW)
        z_s = z_s * scale_s + tl.where(winner, 0.0, tl.sum(e_s, axis=2))
    return off_u, off_v, off_s, z_u, z_v, w, z_s


@triton.jit
def _combine(offset, total):
    """Per row, the threads' (whole-number offset, sum 2^(x - offset)) as one."""
    m = tl.max(offset, axis=1)
    return m, tl.sum(total * _pow2_int(offset - m[:, None]), axis=1)


@triton.jit
def _merge_classes(m, z, x, c2):
    """Add classes x ([ROWS, N] logits, -inf for none) to per-row sums kept as (whole-number
    base-2 offset m, z = sum 2^(x c2 - m)): the new (m, z)."""
    new, factor = _rescale(m, tl.max(x, axis=1) * c2)
    return new, z * factor + tl.sum(tl.exp2(tl.fma(x, c2, -new[:, None])), axis=1)


# ---- Gradients -------------------------------------------------------------------------------


@triton.jit
def _grad_values(s, t, c2, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift, HAS_TARGET: tl.constexpr,
                 STUDENT_GRAD: tl.constexpr, TEACHER_GRAD: tl.constexpr,
                 T_POW: tl.constexpr):
    """The remaining-class gradient formulas (see the module docstring) at logits s, t."""
    a_u = tl.fma(s, c2, -m_u)
    a_v = tl.fma(t, c2, -m_v)
    e_u = tl.exp2(a_u)
    e_v = tl.exp2(a_v)
    g_s = tl.zeros_like(s)
    g_t = tl.zeros_like(t)
    if STUDENT_GRAD:
        g_s = e_u * w_q - e_v * w_p
        if HAS_TARGET:
            if T_POW == 0:
                g_s += w_ce * tl.exp2(tl.fma(s, LOG2E, -m_s))
            else:
                g_s += w_ce * _int_power(e_u, T_POW)
    if TEACHER_GRAD:
        # padding has e_v = 0 and a_v - a_u = nan: max() drops the nan
        g_t = e_v * w_p * tl.fma(tl.maximum(a_v - a_u, -3.0e38), LN2, t_shift)
    return g_s, g_t


@triton.jit
def _store_grads(grad_s_ptr, grad_t_ptr, gs_base, gt_base, pos, g_s, g_t, write, counted,
                 STUDENT_GRAD: tl.constexpr, TEACHER_GRAD: tl.constexpr):
    """Gradients where ``write``: the values in rows that count, zeros in the others (a
    second store: a select would unpack the 16-bit values)."""
    if STUDENT_GRAD:
        ptrs = grad_s_ptr + gs_base + pos
        tl.store(ptrs, g_s.to(grad_s_ptr.dtype.element_ty), mask=write & counted)
        tl.store(ptrs, tl.zeros_like(g_s).to(grad_s_ptr.dtype.element_ty),
                 mask=write & ~counted)
    if TEACHER_GRAD:
        ptrs = grad_t_ptr + gt_base + pos
        tl.store(ptrs, g_t.to(grad_t_ptr.dtype.element_ty), mask=write & counted)
        tl.store(ptrs, tl.zeros_like(g_t).to(grad_t_ptr.dtype.element_ty),
                 mask=write & ~counted)


@triton.jit
def _grad_step(grad_s_ptr, grad_t_ptr, student_ptr, teacher_ptr, s_base, t_base, gs_base,
               gt_base, chunk, shift, C, stride_s_col, stride_t_col, row_ok, c2, counted, m_u,
               m_v, m_s, w_q, w_p, w_ce, t_shift, HAS_TARGET: tl.constexpr,
               STUDENT_GRAD: tl.constexpr, TEACHER_GRAD: tl.constexpr, LANES: tl.constexpr,
               VEC: tl.constexpr, T_POW: tl.constexpr, MASKED: tl.constexpr,
               S_PACKED: tl.constexpr, T_PACKED: tl.constexpr, VECTOR: tl.constexpr):
    """One chunk of the gradient sweep. With VECTOR rows a masked chunk writes only the
    groups that lie wholly inside the row, 16 bytes at once; the two partial groups at the
    row's ends are written by ``_grad_boundary``."""
    s = _load_chunk(student_ptr, s_base, chunk, shift, C, stride_s_col, LANES, VEC, MASKED,
                    S_PACKED, VECTOR)
    t = _load_chunk(teacher_ptr, t_base, chunk, shift, C, stride_t_col, LANES, VEC, MASKED,
                    T_PACKED, VECTOR)
    g_s, g_t = _grad_values(s, t, c2, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift, HAS_TARGET,
                            STUDENT_GRAD, TEACHER_GRAD, T_POW)
    pos = _positions(chunk, LANES, VEC)
    if MASKED:
        if VECTOR:
            group = chunk * LANES + tl.arange(0, LANES)[None, :, None]
            write = row_ok & (group * VEC >= shift) & (group * VEC + VEC <= C + shift)
        else:
            write = row_ok & (pos >= shift) & (pos < C + shift)
    else:
        write = tl.broadcast_to(row_ok, [row_ok.shape[0], LANES, VEC])
    _store_grads(grad_s_ptr, grad_t_ptr, gs_base, gt_base, pos, g_s, g_t, write, counted,
                 STUDENT_GRAD, TEACHER_GRAD)


@triton.jit
def _grad_boundary(grad_s_ptr, grad_t_ptr, student_ptr, teacher_ptr, s_base, t_base, gs_base,
                   gt_base, shift, C, row_ok, c2, counted, m_u, m_v, m_s, w_q, w_p, w_ce,
                   t_shift, first_here, last_here, HAS_TARGET: tl.constexpr,
                   STUDENT_GRAD: tl.constexpr, TEACHER_GRAD: tl.constexpr, VEC: tl.constexpr,
                   T_POW: tl.constexpr):
    """The gradients of the two groups that hold a row's ends but not only its classes: the
    first (positions below the shift; written when ``first_here``, the program holds the
    row's first chunk) and the last ((C + shift) not a multiple of VEC; when ``last_here``);
    a [ROWS, 2, VEC] tile, element by element."""
    shift2 = shift[:, None]
    ends = tl.arange(0, 2)[None, :]
    last = (C + shift2 - 1) // VEC
    groups = tl.where(ends == 0, 0, last)
    # (a row inside one shifted group is written once, as the first)
    partial = tl.where(ends == 0, (shift2 > 0) & first_here[:, None],
                       ((C + shift2) % VEC != 0) & ((last > 0) | (shift2 == 0)) &
                       last_here[:, None])
    s = _load_groups(student_ptr, s_base, groups, partial, shift[:, None, None], C, 1, VEC,
                     True)
    t = _load_groups(teacher_ptr, t_base, groups, partial, shift[:, None, None], C, 1, VEC,
                     True)
    g_s, g_t = _grad_values(s, t, c2, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift, HAS_TARGET,
                            STUDENT_GRAD, TEACHER_GRAD, T_POW)
    pos = groups[:, :, None] * VEC + tl.arange(0, VEC)[None, None, :]
    shift3 = shift[:, None, None]
    write = row_ok & partial[:, :, None] & (pos >= shift3) & (pos < C + shift3)
    _store_grads(grad_s_ptr, grad_t_ptr, gs_base, gt_base, pos, g_s, g_t, write, counted,
                 STUDENT_GRAD, TEACHER_GRAD)


# ---- Per row ---------------------------------------------------------------------------------


@triton.jit
def _row_sums(off_u, z_u, off_v, z_v, w, off_s, z_s):
    """Per row, the [ROWS, N] parts' (threads' or splits') sums as one: (m_u, z_u, m_v, z_v,
    w, m_s, z_s). Sums are kept as (whole-number base-2 offset m, z = sum 2^(x c2 - m)):
    folding m and log2 z into one float would cost 1e-3 per exponent at logits of 1e4."""
    m_u, z_u_row = _combine(off_u, z_u)
    m_v, z_v_row = _combine(off_v, z_v)
    w = tl.sum(_move_w(w, z_v, off_u, off_v, m_u[:, None], m_v[:, None]), axis=1)
    m_s, z_s_row = _combine(off_s, z_s)
    return m_u, z_u_row, m_v, z_v_row, w, m_s, z_s_row


@triton.jit
def _row_values(loss_ptr, parts_ptr, student_ptr, teacher_ptr, target_ptr, grad_scale_ptr,
                stride_s_col, stride_t_col, C, k, T, alpha, beta, ce_weight, adw_scale,
                adw_decay, adw_offset, ignore_index, rows, rows_in, row_ok, shift, s_row,
                t_row, c2, m_u, z_u, m_v, z_v, w, m_s, z_s, win_g, HAS_TARGET: tl.constexpr,
                RANK_BY_TEACHER: tl.constexpr, STUDENT_GRAD: tl.constexpr,
                TEACHER_GRAD: tl.constexpr, SCALE_GRAD: tl.constexpr, ROWS: tl.constexpr,
                VEC: tl.constexpr, K_PAD: tl.constexpr, VECTOR: tl.constexpr,
                T_POW: tl.constexpr):
    """From the sums of the classes outside the winning groups ``win_g`` ([ROWS, N] group
    ids, NO_GROUP for none): the exact top-k, the row's loss and parts (stored), and what the
    gradients need: (counted, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift) for the sweep, the
    top-k classes (C past k) with their gradients, and the target's position, whether it
    needs its own value (not selected) and that value."""
    ranks = tl.arange(0, K_PAD)[None, :]
    shift3 = shift[:, None, None]
    # The winning groups' classes (16-byte loads from L1/L2), the exact top-k among them in
    # rank order, and the others, which join the remaining classes (all of them join the
    # cross-entropy's).
    win_ok = win_g != NO_GROUP
    gathered_p = tl.where(win_ok, win_g, 0)[:, :, None] * VEC + tl.arange(0, VEC)[None, None, :]
    gathered_ok = win_ok[:, :, None] & (gathered_p >= shift3) & (gathered_p < C + shift3)
    gs = _load_groups(student_ptr, s_row[:, None, None], win_g, win_ok, shift3, C,
                      stride_s_col, VEC, VECTOR)
    gt = _load_groups(teacher_ptr, t_row[:, None, None], win_g, win_ok, shift3, C,
                      stride_t_col, VEC, VECTOR)
    top_c, available = _top_classes(gt if RANK_BY_TEACHER else gs, gathered_p - shift3,
                                    gathered_ok, k, C, K_PAD)
    N: tl.constexpr = win_g.shape[1] * VEC
    gs = tl.reshape(gs, [ROWS, N])
    left = tl.reshape(available, [ROWS, N])
    extra_u = tl.where(left, gs, -float("inf"))
    extra_v = tl.where(left, tl.reshape(gt, [ROWS, N]), -float("inf"))
    m_u2, z_u = _merge_classes(m_u, z_u, extra_u, c2)
    m_v2, z_v_all = _merge_classes(m_v, z_v, extra_v, c2)
    w = _move_w(w, z_v, m_u, m_v, m_u2, m_v2)
    m_u, m_v, z_v = m_u2, m_v2, z_v_all
    a_u = tl.fma(extra_u, c2, -m_u[:, None])
    a_v = tl.fma(extra_v, c2, -m_v[:, None])
    w += tl.sum(tl.exp2(a_v) * tl.maximum(a_v - a_u, -3.0e38), axis=1)
    in_top = (ranks < k) & (top_c < C)
    top_p = top_c + shift[:, None]
    top_s = tl.where(in_top, _load(student_ptr, s_row[:, None], top_p, in_top, stride_s_col),
                     0.0)
    top_t = tl.where(in_top, _load(teacher_ptr, t_row[:, None], top_p, in_top, stride_t_col),
                     0.0)

    lz_u = _log2(z_u)
    lz_v = _log2(z_v)
    kl_rest = LN2 * (w / z_v - (lz_v - lz_u))
    # one remaining class: the point mass on both sides, KL exactly 0
    kl_rest = tl.where(C - k == 1, 0.0, kl_rest)
    if HAS_TARGET:
        m_s, z_s = _merge_classes(
            m_s, z_s, tl.where(tl.reshape(gathered_ok, [ROWS, N]), gs, -float("inf")), LOG2E)
        y = tl.load(target_ptr + rows_in)
        counted = (y != ignore_index) & row_ok
        y_safe = tl.where(counted & (y >= 0) & (y < C), y, 0)
        y_p = y_safe + shift
        s_y = tl.load(student_ptr + s_row + y_p * stride_s_col).to(tl.float32)
        ce = tl.fma(LN2, m_s, -s_y) + LN2 * _log2(z_s)
    else:
        counted = row_ok
        y_p = shift
        ce = tl.zeros([ROWS], tl.float32)
    local, grad_top_s, grad_top_t = _local_term_rows(top_s, top_t, k, T, alpha, adw_scale,
                                                     adw_decay, adw_offset, K_PAD,
                                                     TEACHER_GRAD)
    rntk = T * T * kl_rest
    tl.store(loss_ptr + rows, tl.where(counted, ce_weight * ce + alpha * local + beta * rntk,
                                       0.0), mask=row_ok)
    tl.store(parts_ptr + rows * 3 + 0, tl.where(counted, ce, 0.0), mask=row_ok)
    tl.store(parts_ptr + rows * 3 + 1, tl.where(counted, local, 0.0), mask=row_ok)
    tl.store(parts_ptr + rows * 3 + 2, tl.where(counted, rntk, 0.0), mask=row_ok)

    # per row: q_c = 2^a_u / z_u, p_c = 2^a_v / z_v, and softmax(s)_c =
    # 2^(s_c log2 e - m_s) / z_s = (2^a_u)^T 2^(T m_u - m_s) / z_s
    scale = _grad_scale(grad_scale_ptr, SCALE_GRAD)
    rest_w = beta * T * scale
    ce_w = ce_weight * scale
    w_q = rest_w / z_u
    w_p = rest_w / z_v
    w_ce = tl.zeros([ROWS], tl.float32)
    if HAS_TARGET:
        if T_POW == 0:
            w_ce = ce_w / z_s
        else:
            w_ce = ce_w * tl.exp2(T_POW * m_u - m_s) / z_s  # whole numbers: exact
    else:
        m_s = tl.zeros([ROWS], tl.float32)
    t_shift = LN2 * (lz_u - lz_v) - kl_rest
    keep = counted[:, None]
    g_top_s = tl.zeros([ROWS, K_PAD], tl.float32)
    y_rest = tl.zeros([ROWS], tl.int1)
    g_y = tl.zeros([ROWS], tl.float32)
    if STUDENT_GRAD:
        g_top_s = grad_top_s * scale
        if HAS_TARGET:
            g_top_s += (ce_w / z_s)[:, None] * tl.exp2(tl.fma(top_s, LOG2E, -m_s[:, None])) - \
                tl.where(top_c == y[:, None], ce_w, 0.0)
            # the target, when it is not among the selected classes
            y_rest = counted & (tl.max((top_c == y[:, None]).to(tl.int32), axis=1) == 0)
            t_y = tl.load(teacher_ptr + t_row + y_p * stride_t_col).to(tl.float32)
            g_y = w_q * tl.exp2(tl.fma(s_y, c2, -m_u)) - w_p * tl.exp2(tl.fma(t_y, c2, -m_v)) + \
                (ce_w / z_s) * tl.exp2(tl.fma(s_y, LOG2E, -m_s)) - ce_w
        g_top_s = tl.where(keep, g_top_s, 0.0)
    g_top_t = tl.where(keep, grad_top_t * scale, 0.0)
    return (counted, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift, tl.where(in_top, top_c, C),
            g_top_s, g_top_t, y_p, y_rest, g_y)


@triton.jit
def _merge_splits(loss_ptr, parts_ptr, student_ptr, teacher_ptr, target_ptr, grad_scale_ptr,
                  stride_s_col, stride_t_col, C, k, T, alpha, beta, ce_weight, adw_scale,
                  adw_decay, adw_offset, ignore_index, rows, rows_in, row_ok, shift, s_row,
                  t_row, c2, records, row_record, splits, HAS_TARGET: tl.constexpr,
                  RANK_BY_TEACHER: tl.constexpr, STUDENT_GRAD: tl.constexpr,
                  TEACHER_GRAD: tl.constexpr, SCALE_GRAD: tl.constexpr, ROWS: tl.constexpr,
                  VEC: tl.constexpr, K_PAD: tl.constexpr, VECTOR: tl.constexpr,
                  T_POW: tl.constexpr, S_PAD: tl.constexpr):
    """A wide row's values from its splits' records (``_row_values``), stored in its row
    record for the gradient launch. Loads go through L2 (``.cg``): the records come from
    programs on other SMs."""
    SPLIT_RECORD: tl.constexpr = STATS + K_PAD
    parts = records[:, None] + tl.arange(0, S_PAD)[None, :] * SPLIT_RECORD
    has = tl.arange(0, S_PAD)[None, :] < splits
    m_u, z_u, m_v, z_v, w, m_s, z_s = _row_sums(
        tl.load(parts + SPLIT_M_U, mask=has, other=-1e30, cache_modifier=".cg"),
        tl.load(parts + SPLIT_Z_U, mask=has, other=0.0, cache_modifier=".cg"),
        tl.load(parts + SPLIT_M_V, mask=has, other=-1e30, cache_modifier=".cg"),
        tl.load(parts + SPLIT_Z_V, mask=has, other=0.0, cache_modifier=".cg"),
        tl.load(parts + SPLIT_W, mask=has, other=0.0, cache_modifier=".cg"),
        tl.load(parts + SPLIT_M_S, mask=has, other=-1e30, cache_modifier=".cg"),
        tl.load(parts + SPLIT_Z_S, mask=has, other=0.0, cache_modifier=".cg"))
    slot = tl.arange(0, S_PAD * K_PAD)[None, :]
    has = slot // K_PAD < splits
    cells = records[:, None] + (slot // K_PAD) * SPLIT_RECORD + STATS + slot % K_PAD
    win_g = tl.where(has, tl.load(cells, mask=has, other=0.0, cache_modifier=".cg")
                     .to(tl.int32, bitcast=True), NO_GROUP)
    (counted, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift, top_c, g_top_s, g_top_t, y_p, y_rest,
     g_y) = _row_values(
        loss_ptr, parts_ptr, student_ptr, teacher_ptr, target_ptr, grad_scale_ptr,
        stride_s_col, stride_t_col, C, k, T, alpha, beta, ce_weight, adw_scale, adw_decay,
        adw_offset, ignore_index, rows, rows_in, row_ok, shift, s_row, t_row, c2, m_u, z_u,
        m_v, z_v, w, m_s, z_s, win_g, HAS_TARGET, RANK_BY_TEACHER, STUDENT_GRAD, TEACHER_GRAD,
        SCALE_GRAD, ROWS, VEC, K_PAD, VECTOR, T_POW)
    tl.store(row_record + ROW_COUNTED, counted.to(tl.float32))
    tl.store(row_record + ROW_M_U, m_u)
    tl.store(row_record + ROW_M_V, m_v)
    tl.store(row_record + ROW_M_S, m_s)
    tl.store(row_record + ROW_W_Q, w_q)
    tl.store(row_record + ROW_W_P, w_p)
    tl.store(row_record + ROW_W_CE, w_ce)
    tl.store(row_record + ROW_T_SHIFT, t_shift)
    tl.store(row_record + ROW_Y_POS, y_p.to(tl.int32).to(tl.float32, bitcast=True))
    tl.store(row_record + ROW_Y_REST, y_rest.to(tl.float32))
    tl.store(row_record + ROW_G_Y, g_y)
    cells = (row_record + ROW_WORDS)[:, None] + tl.arange(0, K_PAD)[None, :]
    tl.store(cells, top_c.to(tl.float32, bitcast=True))
    tl.store(cells + K_PAD, g_top_s)
    tl.store(cells + 2 * K_PAD, g_top_t)


# ---- The kernel ------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["row0"])  # one variant for every wave
def _ldrld_fused_kernel(
    # pointers
    loss_ptr, parts_ptr, grad_s_ptr, grad_t_ptr,
    student_ptr, teacher_ptr, target_ptr, grad_scale_ptr,
    # strides
    stride_s_row, stride_s_col, stride_t_row, stride_t_col, stride_gs_row, stride_gt_row,
    # sizes
    n_rows, C, k,
    # wide rows (SPLIT_PHASE 1 to 3): the wave's first row, splits per row, chunks per split,
    # and the wave's workspace (the records described above STATS)
    row0, splits, split_chunks, work_ptr,
    # runtime scalars
    T, alpha, beta, ce_weight, adw_scale, adw_decay, adw_offset, ignore_index,
    # flags
    HAS_TARGET: tl.constexpr, RANK_BY_TEACHER: tl.constexpr, STUDENT_GRAD: tl.constexpr,
    TEACHER_GRAD: tl.constexpr, SCALE_GRAD: tl.constexpr,
    # layout (policy.FusedLaunch and the launcher's alignment checks)
    ROWS: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, KPL: tl.constexpr,
    K_PAD: tl.constexpr, ROW_ALIGN: tl.constexpr, SHIFTED: tl.constexpr, VECTOR: tl.constexpr,
    S_PACKED: tl.constexpr, T_PACKED: tl.constexpr, T_POW: tl.constexpr,
    SPLIT_PHASE: tl.constexpr, S_PAD: tl.constexpr,
):
    BLOCK: tl.constexpr = LANES * VEC
    SPLIT_RECORD: tl.constexpr = STATS + K_PAD
    if SPLIT_PHASE == 0:
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    else:  # one row per program (ROWS is 1), split program_id(1) of it
        rows = row0 + tl.program_id(0).to(tl.int64) + tl.arange(0, ROWS)
        # the row's workspace: its splits' records, then its row record
        records = work_ptr + tl.zeros([ROWS], tl.int64) + tl.program_id(0).to(tl.int64) * \
            (splits * SPLIT_RECORD + ROW_WORDS + 3 * K_PAD)
        row_record = records + splits * SPLIT_RECORD
    row_ok = rows < n_rows
    # rows past the end read the last row (nothing of theirs is stored): no load needs a row
    # mask
    rows_in = tl.minimum(rows, n_rows - 1)
    if SHIFTED:
        # every input and gradient row has the same stride: position p is at row start - h + p
        shift = (rows_in * stride_s_row % VEC).to(tl.int32)
        s_row = tl.multiple_of(rows_in * stride_s_row - shift, VEC)
        t_row = tl.multiple_of(rows_in * stride_t_row - shift, VEC)
    else:
        shift = tl.zeros([ROWS], tl.int32)
        s_row = tl.multiple_of(rows_in * stride_s_row, ROW_ALIGN)
        t_row = tl.multiple_of(rows_in * stride_t_row, ROW_ALIGN)
    shift3 = shift[:, None, None]
    s_base = s_row[:, None, None]
    t_base = t_row[:, None, None]
    key_ptr = teacher_ptr if RANK_BY_TEACHER else student_ptr
    key_base = t_base if RANK_BY_TEACHER else s_base
    key_stride = stride_t_col if RANK_BY_TEACHER else stride_s_col
    KEY_PACKED: tl.constexpr = T_PACKED if RANK_BY_TEACHER else S_PACKED
    # chunks [FIRST, last) lie inside every row of the tile; the first (when shifted) and
    # those from `last` to `end` are masked. The program streams chunks [lo, hi): all of them,
    # or its split's; of those, [full_lo, full_hi) are full and [tail_lo, hi) masked.
    FIRST: tl.constexpr = 1 if SHIFTED else 0
    last = tl.maximum(C // BLOCK, FIRST)
    end = tl.cdiv(C + (VEC - 1 if SHIFTED else 0), BLOCK)
    if SPLIT_PHASE == 0:
        lo = 0
        hi = end
        full_lo = FIRST
        full_hi = last
        tail_lo = last
        first_here = tl.full([ROWS], 1, tl.int1)
        last_here = tl.full([ROWS], 1, tl.int1)
    else:
        split = tl.program_id(1)
        lo = split * split_chunks
        hi = tl.minimum(lo + split_chunks, end)
        full_lo = tl.maximum(lo, FIRST)
        full_hi = tl.maximum(tl.minimum(hi, last), full_lo)
        tail_lo = tl.maximum(lo, last)
        # whether the split holds the chunk of the row's first position, and of its last one
        # (a shifted row may end a chunk before `end`); per row: the interpreter mistypes a
        # scalar bool broadcast into a tensor
        first_here = tl.zeros([ROWS], tl.int32) + lo == 0
        last_chunk = (C + shift - 1) // BLOCK
        last_here = (last_chunk >= lo) & (last_chunk < hi)
    n_full = full_hi - full_lo
    c2 = LOG2E / T  # x c2 is x / T in base 2
    ranks = tl.arange(0, K_PAD)[None, :]

    if SPLIT_PHASE != 2:
        # ---- 1. Selection: each thread's KPL best groups, then the k best of its chunks ----
        neg = tl.full([ROWS, LANES], -float("inf"), tl.float32)
        empty = tl.full([ROWS, LANES], NO_GROUP, tl.int32)
        v0, v1, v2, v3, v4 = neg, neg, neg, neg, neg
        g0, g1, g2, g3, g4 = empty, empty, empty, empty, empty
        dropped = neg
        if SHIFTED:  # noqa: SIM102 (compile-time, then run-time)
            if lo == 0:
                v0, g0, v1, g1, v2, g2, v3, g3, v4, g4, dropped = _select_step(
                    key_ptr, key_base, 0, shift3, C, key_stride, v0, g0, v1, g1, v2, g2, v3,
                    g3, v4, g4, dropped, LANES, VEC, KPL, True, False, VECTOR)
        # two chunks per iteration: half the loop's own instructions
        for pair in range(n_full // 2):  # trips: full_pairs
            chunk = full_lo + 2 * pair
            v0, g0, v1, g1, v2, g2, v3, g3, v4, g4, dropped = _select_step(
                key_ptr, key_base, chunk, shift3, C, key_stride, v0, g0, v1, g1, v2, g2, v3,
                g3, v4, g4, dropped, LANES, VEC, KPL, False, KEY_PACKED, VECTOR)
            v0, g0, v1, g1, v2, g2, v3, g3, v4, g4, dropped = _select_step(
                key_ptr, key_base, chunk + 1, shift3, C, key_stride, v0, g0, v1, g1, v2, g2,
                v3, g3, v4, g4, dropped, LANES, VEC, KPL, False, KEY_PACKED, VECTOR)
        if n_full % 2 == 1:  # runs: full_odd
            v0, g0, v1, g1, v2, g2, v3, g3, v4, g4, dropped = _select_step(
                key_ptr, key_base, full_hi - 1, shift3, C, key_stride, v0, g0, v1, g1, v2, g2,
                v3, g3, v4, g4, dropped, LANES, VEC, KPL, False, KEY_PACKED, VECTOR)
        for chunk in range(tail_lo, hi):  # trips: masked_tail_chunks
            v0, g0, v1, g1, v2, g2, v3, g3, v4, g4, dropped = _select_step(
                key_ptr, key_base, chunk, shift3, C, key_stride, v0, g0, v1, g1, v2, g2, v3,
                g3, v4, g4, dropped, LANES, VEC, KPL, True, False, VECTOR)

        # The k best groups: k rounds, each taking the best head of the threads' sorted lists.
        win_g = tl.full([ROWS, K_PAD], NO_GROUP, tl.int32)
        win_v = tl.full([ROWS, K_PAD], -float("inf"), tl.float32)
        theta_v = tl.full([ROWS], -float("inf"), tl.float32)
        theta_g = tl.full([ROWS], NO_GROUP, tl.int32)
        for r in range(k):  # trips: k
            theta_v, theta_g = _best_group(v0, g0)
            pop = g0 == theta_g[:, None]
            v0, g0 = tl.where(pop, v1, v0), tl.where(pop, g1, g0)
            v1, g1 = tl.where(pop, v2, v1), tl.where(pop, g2, g1)
            v2, g2 = tl.where(pop, v3, v2), tl.where(pop, g3, g2)
            v3, g3 = tl.where(pop, v4, v3), tl.where(pop, g4, g3)
            v4, g4 = tl.where(pop, -float("inf"), v4), tl.where(pop, NO_GROUP, g4)
            win_g = tl.where(ranks == r, theta_g[:, None], win_g)
            win_v = tl.where(ranks == r, theta_v[:, None], win_v)
        # Exact unless a key that fell off some thread's list ranks with the k (ties count as
        # unsure).
        unsure = (dropped >= theta_v[:, None]) & (dropped > -float("inf")) & row_ok[:, None]
        if tl.max(tl.max(unsure.to(tl.int32), axis=1), axis=0) > 0:  # runs: exact_selection
            # A winner above every key that fell off a list is certain, at its rank (the heads
            # come out in rank order, and no group off the lists ranks above those keys). The
            # ranks from the program's fewest certain winners on, exactly: one pass over the
            # chunks each for the best group after the last winner (for a row with more
            # certain winners, the same ones again).
            certain = tl.sum((win_v > tl.max(dropped, axis=1)[:, None]).to(tl.int32), axis=1)
            r0 = tl.min(tl.where(tl.max(unsure.to(tl.int32), axis=1) > 0, certain, k), axis=0)
            at = ranks == r0 - 1
            theta_v = tl.where(r0 > 0, tl.max(tl.where(at, win_v, -float("inf")), axis=1),
                               float("inf"))
            theta_g = tl.where(r0 > 0, tl.max(tl.where(at, win_g, -1), axis=1), -1)
            for r in range(r0, k):  # trips: exact_rounds
                best_v, best_g = neg, empty
                if SPLIT_PHASE == 0:
                    # whole rows: the full chunks unmasked (of an unaligned row, half the cost)
                    if SHIFTED:  # noqa: SIM102 (compile-time, then run-time)
                        if lo == 0:
                            best_v, best_g = _after_step(
                                key_ptr, key_base, 0, shift3, C, key_stride, theta_v, theta_g,
                                best_v, best_g, LANES, VEC, True, False, VECTOR)
                    for chunk in range(full_lo, full_hi):  # trips: 2 * full_pairs + full_odd
                        best_v, best_g = _after_step(
                            key_ptr, key_base, chunk, shift3, C, key_stride, theta_v, theta_g,
                            best_v, best_g, LANES, VEC, False, False, VECTOR)
                    for chunk in range(tail_lo, hi):  # trips: masked_tail_chunks
                        best_v, best_g = _after_step(
                            key_ptr, key_base, chunk, shift3, C, key_stride, theta_v, theta_g,
                            best_v, best_g, LANES, VEC, True, False, VECTOR)
                else:  # a split's few chunks: one masked loop compiles to less
                    for chunk in range(lo, hi):  # trips: all_chunks
                        best_v, best_g = _after_step(
                            key_ptr, key_base, chunk, shift3, C, key_stride, theta_v, theta_g,
                            best_v, best_g, LANES, VEC, True, False, VECTOR)
                theta_v, theta_g = _best_group(best_v, best_g)
                win_g = tl.where(ranks == r, theta_g[:, None], win_g)

        # ---- 2. Statistics of the remaining classes, per thread -----------------------------
        off_u = tl.full([ROWS, LANES], -1e30, tl.float32)
        off_v = tl.full([ROWS, LANES], -1e30, tl.float32)
        off_s = tl.full([ROWS, LANES], -1e30, tl.float32)
        z_u = tl.zeros([ROWS, LANES], tl.float32)
        z_v = tl.zeros([ROWS, LANES], tl.float32)
        w = tl.zeros([ROWS, LANES], tl.float32)
        z_s = tl.zeros([ROWS, LANES], tl.float32)
        th_v = theta_v[:, None]
        # fewer than k groups with a finite key leave the threshold at (-inf, NO_GROUP): the
        # groups of key -inf are then not winners (none is in win_g), so none may rank at it
        th_g = tl.where(theta_g == NO_GROUP, -1, theta_g)[:, None]
        if SHIFTED:  # noqa: SIM102 (compile-time, then run-time)
            if lo == 0:
                off_u, off_v, off_s, z_u, z_v, w, z_s = _stats_step(
                    student_ptr, teacher_ptr, s_base, t_base, 0, shift3, C, stride_s_col,
                    stride_t_col, c2, th_v, th_g, off_u, off_v, off_s, z_u, z_v, w, z_s,
                    HAS_TARGET, RANK_BY_TEACHER, LANES, VEC, T_POW, True, False, False, VECTOR)
        for pair in range(n_full // 2):  # trips: full_pairs
            chunk = full_lo + 2 * pair
            off_u, off_v, off_s, z_u, z_v, w, z_s = _stats_step(
                student_ptr, teacher_ptr, s_base, t_base, chunk, shift3, C, stride_s_col,
                stride_t_col, c2, th_v, th_g, off_u, off_v, off_s, z_u, z_v, w, z_s,
                HAS_TARGET, RANK_BY_TEACHER, LANES, VEC, T_POW, False, S_PACKED, T_PACKED,
                VECTOR)
            off_u, off_v, off_s, z_u, z_v, w, z_s = _stats_step(
                student_ptr, teacher_ptr, s_base, t_base, chunk + 1, shift3, C, stride_s_col,
                stride_t_col, c2, th_v, th_g, off_u, off_v, off_s, z_u, z_v, w, z_s,
                HAS_TARGET, RANK_BY_TEACHER, LANES, VEC, T_POW, False, S_PACKED, T_PACKED,
                VECTOR)
        if n_full % 2 == 1:  # runs: full_odd
            off_u, off_v, off_s, z_u, z_v, w, z_s = _stats_step(
                student_ptr, teacher_ptr, s_base, t_base, full_hi - 1, shift3, C,
                stride_s_col, stride_t_col, c2, th_v, th_g, off_u, off_v, off_s, z_u, z_v, w,
                z_s, HAS_TARGET, RANK_BY_TEACHER, LANES, VEC, T_POW, False, S_PACKED,
                T_PACKED, VECTOR)
        for chunk in range(tail_lo, hi):  # trips: masked_tail_chunks
            off_u, off_v, off_s, z_u, z_v, w, z_s = _stats_step(
                student_ptr, teacher_ptr, s_base, t_base, chunk, shift3, C, stride_s_col,
                stride_t_col, c2, th_v, th_g, off_u, off_v, off_s, z_u, z_v, w, z_s,
                HAS_TARGET, RANK_BY_TEACHER, LANES, VEC, T_POW, True, False, False, VECTOR)
        m_u, z_u, m_v, z_v, w, m_s, z_s = _row_sums(off_u, z_u, off_v, z_v, w, off_s, z_s)
        if SPLIT_PHASE == 0:
            (counted, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift, top_c, g_top_s, g_top_t, y_p,
             y_rest, g_y) = _row_values(
                loss_ptr, parts_ptr, student_ptr, teacher_ptr, target_ptr, grad_scale_ptr,
                stride_s_col, stride_t_col, C, k, T, alpha, beta, ce_weight, adw_scale,
                adw_decay, adw_offset, ignore_index, rows, rows_in, row_ok, shift, s_row, t_row,
                c2, m_u, z_u, m_v, z_v, w, m_s, z_s, win_g, HAS_TARGET, RANK_BY_TEACHER,
                STUDENT_GRAD, TEACHER_GRAD, SCALE_GRAD, ROWS, VEC, K_PAD, VECTOR, T_POW)
        else:
            # The split's record; in phase 1 the last of the row's programs to finish merges
            # them all (phase 3 leaves that to the caller: ``triton_parallel``).
            record = records + split * SPLIT_RECORD
            tl.store(record + SPLIT_M_U, m_u)
            tl.store(record + SPLIT_Z_U, z_u)
            tl.store(record + SPLIT_M_V, m_v)
            tl.store(record + SPLIT_Z_V, z_v)
            tl.store(record + SPLIT_W, w)
            tl.store(record + SPLIT_M_S, m_s)
            tl.store(record + SPLIT_Z_S, z_s)
            tl.store((record + STATS)[:, None] + ranks, win_g.to(tl.float32, bitcast=True))
        if SPLIT_PHASE == 1:
            # every thread's stores are issued, then one release-acquire ticket per program
            tl.debug_barrier()
            ticket_ptr = (row_record + TICKET).to(tl.pointer_type(tl.int32))
            ticket = tl.max(tl.atomic_add(ticket_ptr, 1, sem="acq_rel"), axis=0)
            if ticket == splits - 1:  # runs: 1 / splits
                _merge_splits(
                    loss_ptr, parts_ptr, student_ptr, teacher_ptr, target_ptr, grad_scale_ptr,
                    stride_s_col, stride_t_col, C, k, T, alpha, beta, ce_weight, adw_scale,
                    adw_decay, adw_offset, ignore_index, rows, rows_in, row_ok, shift, s_row,
                    t_row, c2, records, row_record, splits, HAS_TARGET, RANK_BY_TEACHER,
                    STUDENT_GRAD, TEACHER_GRAD, SCALE_GRAD, ROWS, VEC, K_PAD, VECTOR, T_POW,
                    S_PAD)
                tl.store(ticket_ptr, 0)  # ready for the next wave
    else:
        # ---- The row's values, from the record of the program that merged its splits ----
        counted = tl.load(row_record + ROW_COUNTED) != 0.0
        m_u = tl.load(row_record + ROW_M_U)
        m_v = tl.load(row_record + ROW_M_V)
        m_s = tl.load(row_record + ROW_M_S)
        w_q = tl.load(row_record + ROW_W_Q)
        w_p = tl.load(row_record + ROW_W_P)
        w_ce = tl.load(row_record + ROW_W_CE)
        t_shift = tl.load(row_record + ROW_T_SHIFT)
        y_p = tl.load(row_record + ROW_Y_POS).to(tl.int32, bitcast=True)
        y_rest = tl.load(row_record + ROW_Y_REST) != 0.0
        g_y = tl.load(row_record + ROW_G_Y)
        cells = (row_record + ROW_WORDS)[:, None] + ranks
        top_c = tl.load(cells).to(tl.int32, bitcast=True)
        g_top_s = tl.load(cells + K_PAD)
        g_top_t = tl.load(cells + 2 * K_PAD)

    # ---- 3. Gradients: every class in one vectorized sweep, then the k selected ------------
    if (SPLIT_PHASE == 0 or SPLIT_PHASE == 2) and (STUDENT_GRAD or TEACHER_GRAD):
        if SHIFTED:
            gs_row = tl.multiple_of(rows_in * stride_gs_row - shift, VEC)
            gt_row = tl.multiple_of(rows_in * stride_gt_row - shift, VEC)
        else:  # (a "- 0" here would be folded away with the alignment it carries)
            gs_row = tl.multiple_of(rows_in * stride_gs_row, ROW_ALIGN)
            gt_row = tl.multiple_of(rows_in * stride_gt_row, ROW_ALIGN)
        gs_base = gs_row[:, None, None]
        gt_base = gt_row[:, None, None]
        per_row = (counted[:, None, None], m_u[:, None, None], m_v[:, None, None],
                   m_s[:, None, None], w_q[:, None, None], w_p[:, None, None],
                   w_ce[:, None, None], t_shift[:, None, None])
        ok3 = row_ok[:, None, None]
        if SHIFTED:  # noqa: SIM102 (compile-time, then run-time)
            if lo == 0:
                _grad_step(grad_s_ptr, grad_t_ptr, student_ptr, teacher_ptr, s_base, t_base,
                           gs_base, gt_base, 0, shift3, C, stride_s_col, stride_t_col, ok3, c2,
                           *per_row, HAS_TARGET, STUDENT_GRAD, TEACHER_GRAD, LANES, VEC, T_POW,
                           True, False, False, VECTOR)
        for pair in range(n_full // 2):  # trips: full_pairs
            chunk = full_lo + 2 * pair
            _grad_step(grad_s_ptr, grad_t_ptr, student_ptr, teacher_ptr, s_base, t_base,
                       gs_base, gt_base, chunk, shift3, C, stride_s_col, stride_t_col, ok3,
                       c2, *per_row, HAS_TARGET, STUDENT_GRAD, TEACHER_GRAD, LANES, VEC,
                       T_POW, False, S_PACKED, T_PACKED, VECTOR)
            _grad_step(grad_s_ptr, grad_t_ptr, student_ptr, teacher_ptr, s_base, t_base,
                       gs_base, gt_base, chunk + 1, shift3, C, stride_s_col, stride_t_col,
                       ok3, c2, *per_row, HAS_TARGET, STUDENT_GRAD, TEACHER_GRAD, LANES, VEC,
                       T_POW, False, S_PACKED, T_PACKED, VECTOR)
        if n_full % 2 == 1:  # runs: full_odd
            _grad_step(grad_s_ptr, grad_t_ptr, student_ptr, teacher_ptr, s_base, t_base,
                       gs_base, gt_base, full_hi - 1, shift3, C, stride_s_col, stride_t_col,
                       ok3, c2, *per_row, HAS_TARGET, STUDENT_GRAD, TEACHER_GRAD, LANES, VEC,
                       T_POW, False, S_PACKED, T_PACKED, VECTOR)
        for chunk in range(tail_lo, hi):  # trips: masked_tail_chunks
            _grad_step(grad_s_ptr, grad_t_ptr, student_ptr, teacher_ptr, s_base, t_base,
                       gs_base, gt_base, chunk, shift3, C, stride_s_col, stride_t_col, ok3,
                       c2, *per_row, HAS_TARGET, STUDENT_GRAD, TEACHER_GRAD, LANES, VEC,
                       T_POW, True, False, False, VECTOR)
        if VECTOR:  # the partial groups at the rows' ends, skipped by the vector stores
            _grad_boundary(grad_s_ptr, grad_t_ptr, student_ptr, teacher_ptr, s_base, t_base,
                           gs_base, gt_base, shift, C, ok3, c2, *per_row, first_here,
                           last_here, HAS_TARGET,
                           STUDENT_GRAD, TEACHER_GRAD, VEC, T_POW)

        # The selected classes and the target get their own values once every thread's
        # sweep (which wrote the remaining-class formula there too) has landed.
        tl.debug_barrier()
        top_p = top_c + shift[:, None]
        in_top = (top_c < C) & row_ok[:, None]
        if SPLIT_PHASE == 2:  # the selected classes and the target in this split
            in_top = in_top & (top_p >= lo * BLOCK) & (top_p < hi * BLOCK)
            y_rest = y_rest & (y_p >= lo * BLOCK) & (y_p < hi * BLOCK)
        if STUDENT_GRAD:
            if HAS_TARGET:
                tl.store(grad_s_ptr + gs_row + y_p, g_y.to(grad_s_ptr.dtype.element_ty),
                         mask=y_rest & row_ok)
            tl.store(grad_s_ptr + gs_row[:, None] + top_p,
                     g_top_s.to(grad_s_ptr.dtype.element_ty), mask=in_top)
        if TEACHER_GRAD:
            tl.store(grad_t_ptr + gt_row[:, None] + top_p,
                     g_top_t.to(grad_t_ptr.dtype.element_ty), mask=in_top)


# ---- Launcher --------------------------------------------------------------------------------


def _row_align(tensor: torch.Tensor, vec: int) -> int:
    """The largest power of two, at most ``vec``, that divides the row stride."""
    align = vec
    while align > 1 and tensor.stride(0) % align:
        align //= 2
    return align


def _alignment(tensors: list[torch.Tensor], vec: int) -> tuple[int, bool, bool]:
    """(ROW_ALIGN, SHIFTED, VECTOR) of the inputs and gradients. VECTOR: every tensor has
    contiguous classes and a 16-byte aligned base (a view with a storage offset may not), and
    every row starts on a 16-byte boundary, as it is or once its positions are shifted
    (SHIFTED, when every row has the same stride): then groups of VEC classes are aligned
    16-byte blocks, which the masked chunks read and write whole (``_load_chunk``)."""
    align = min(_row_align(tensor, vec) for tensor in tensors)
    based = all(tensor.stride(1) == 1 and tensor.data_ptr() % 16 == 0 for tensor in tensors)
    shifted = align < vec and len({tensor.stride(0) for tensor in tensors}) == 1 and based
    return align, shifted, based and (shifted or align == vec)


def _packed(tensor: torch.Tensor, vec: int, shifted: bool) -> bool:
    """Whether the kernel may read ``tensor`` as 32-bit words of two bfloat16 classes:
    contiguous classes, and chunks that start at even elements."""
    return (tensor.dtype == torch.bfloat16 and tensor.stride(1) == 1 and vec % 2 == 0
            and (shifted or tensor.stride(0) % 2 == 0) and tensor.data_ptr() % 4 == 0)


def integer_temperature(temperature: float) -> int:
    """T itself when the kernel raises 2^a_u to the T-th power by multiplying (T = 1, 2, 4),
    else 0 (then the cross-entropy takes an exponential of its own per class)."""
    return int(temperature) if temperature in (1.0, 2.0, 4.0) else 0


def kernel_arguments(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None,
                     config: LossConfig, row_loss: torch.Tensor, parts: torch.Tensor,
                     grad_s: torch.Tensor | None, grad_t: torch.Tensor | None,
                     grad_scale: torch.Tensor | None, launch: FusedLaunch) -> dict:
    """The keyword arguments of ``_ldrld_fused_kernel`` for a call (all but the wide rows'
    ``row0``, ``splits``, ``split_chunks``, ``work_ptr``, ``SPLIT_PHASE`` and ``S_PAD``)."""
    rows, num_classes = student.shape
    grads = [grad for grad in (grad_s, grad_t) if grad is not None]
    row_align, shifted, vector = _alignment([student, teacher, *grads], launch.vec)
    k_pad = triton.next_power_of_2(config.k)
    return dict(  # noqa: C408 (the kernel's argument names)
        loss_ptr=row_loss, parts_ptr=parts,
        grad_s_ptr=grad_s if grad_s is not None else row_loss,
        grad_t_ptr=grad_t if grad_t is not None else row_loss,
        student_ptr=student, teacher_ptr=teacher,
        target_ptr=target if target is not None else row_loss,
        grad_scale_ptr=grad_scale if grad_scale is not None else row_loss,
        stride_s_row=student.stride(0), stride_s_col=student.stride(1),
        stride_t_row=teacher.stride(0), stride_t_col=teacher.stride(1),
        stride_gs_row=num_classes if grad_s is None else grad_s.stride(0),
        stride_gt_row=num_classes if grad_t is None else grad_t.stride(0),
        n_rows=rows, C=num_classes, k=config.k,
        T=config.temperature, alpha=config.alpha, beta=config.beta,
        ce_weight=config.ce_weight, adw_scale=config.adw_scale, adw_decay=config.adw_decay,
        adw_offset=config.adw_offset, ignore_index=config.ignore_index,
        HAS_TARGET=target is not None, RANK_BY_TEACHER=config.rank_by == "teacher",
        STUDENT_GRAD=grad_s is not None, TEACHER_GRAD=grad_t is not None,
        SCALE_GRAD=grad_scale is not None,
        ROWS=launch.rows, LANES=launch.lanes, VEC=launch.vec, KPL=launch.candidates,
        K_PAD=k_pad, ROW_ALIGN=row_align, SHIFTED=shifted, VECTOR=vector,
        S_PACKED=_packed(student, launch.vec, shifted),
        T_PACKED=_packed(teacher, launch.vec, shifted),
        T_POW=integer_temperature(config.temperature),
        num_warps=launch.num_warps, maxnreg=launch.max_registers,
    )


def ldrld_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    config: LossConfig,
    need_student_grad: bool,
    need_teacher_grad: bool,
    grad_scale: torch.Tensor | None = None,
    *,
    launch: FusedLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Same contract as ``torch_path.ldrld_rows``: row losses (float32), per-row parts and
    the gradients of the row losses (times ``grad_scale``) in the inputs' dtypes. One launch
    up to ``policy.MAX_FUSED`` classes; ``launch`` overrides the policy's configuration."""
    # the launches on the logits' device, and its current stream (hardware.on_device)
    with on_device(student.device):
        rows, num_classes = student.shape
        row_loss, parts, grad_s, grad_t = allocate_outputs(student, teacher, need_student_grad,
                                                           need_teacher_grad)
        if rows == 0:
            return row_loss, parts, grad_s, grad_t
        launch = launch or launch_for(rows, num_classes, student.element_size(),
                                      teacher.element_size(), hardware_of(student.device))
        arguments = kernel_arguments(student, teacher, target, config, row_loss, parts, grad_s,
                                     grad_t, grad_scale, launch)
        if not launch.split_chunks:
            _ldrld_fused_kernel[(triton.cdiv(rows, launch.rows),)](
                row0=0, splits=1, split_chunks=0, work_ptr=row_loss, SPLIT_PHASE=0, S_PAD=1,
                **arguments)
            return row_loss, parts, grad_s, grad_t

        # Wide rows: each wave of rows, statistics then gradients; a wave's logits stay in L2
        # between the two launches.
        arguments = split_arguments(arguments, launch, num_classes, student.device)
        for row0 in range(0, rows, launch.wave_rows):
            grid = (min(launch.wave_rows, rows - row0), arguments["splits"])
            for phase in (1, 2):
                _ldrld_fused_kernel[grid](row0=row0, SPLIT_PHASE=phase, **arguments)
        return row_loss, parts, grad_s, grad_t


def split_arguments(arguments: dict, launch: FusedLaunch, num_classes: int,
                    device: torch.device) -> dict:
    """``arguments`` with the wide rows' own (but ``row0`` and ``SPLIT_PHASE``): rows of
    ``num_classes`` in splits of ``launch.split_chunks`` chunks, and the workspace of a wave
    of ``launch.wave_rows`` rows (the records described above STATS)."""
    chunks = _chunk_bounds(num_classes, launch.lanes, launch.vec, arguments["SHIFTED"])[2]
    splits = triton.cdiv(chunks, launch.split_chunks)
    k_pad = arguments["K_PAD"]
    # (zeros: the tickets start at 0, and the program that merges a row resets its ticket)
    work = torch.zeros(launch.wave_rows, splits * (STATS + k_pad) + ROW_WORDS + 3 * k_pad,
                       dtype=torch.float32, device=device)
    return {**arguments, "splits": splits, "split_chunks": launch.split_chunks,
            "work_ptr": work, "S_PAD": triton.next_power_of_2(splits)}


def _chunk_bounds(classes: int, lanes: int, vec: int, shifted: bool) -> tuple[int, int, int]:
    """The kernel's (FIRST, last, end): chunks [FIRST, last) are full in every row."""
    block = lanes * vec
    first = 1 if shifted else 0
    return first, max(classes // block, first), -(-(classes + (vec - 1 if shifted else 0)) // block)


def loop_counts(classes: int, lanes: int, vec: int, shifted: bool,
                split_chunks: int = 0) -> dict[str, float]:
    """The trips of the kernel's chunk loops per program, averaged over a row's splits (one
    range per row when ``split_chunks`` is 0)."""
    first, last, end = _chunk_bounds(classes, lanes, vec, shifted)
    step = split_chunks or end
    ranges = [(lo, min(lo + step, end)) for lo in range(0, end, step)]
    counts: dict[str, float] = {"full_pairs": 0.0, "full_odd": 0.0, "masked_tail_chunks": 0.0,
                                "all_chunks": 0.0}
    for lo, hi in ranges:
        full = max(min(hi, last) - max(lo, first), 0)
        counts["full_pairs"] += full // 2 / len(ranges)
        counts["full_odd"] += full % 2 / len(ranges)
        counts["masked_tail_chunks"] += max(hi - max(lo, last), 0) / len(ranges)
        counts["all_chunks"] += (hi - lo) / len(ranges)
    return counts


def row_logits(rows_model: str, samples: int, classes: int, starts: torch.Tensor, period: int,
               generator: torch.Generator) -> torch.Tensor:
    """``samples`` rows of ``rows_model`` (``policy.ROW_MODELS`` says what each is), each the
    classes ``starts[i]`` to ``starts[i] + classes`` (a split of a wider row starts past 0;
    splits start on whole chunks, multiples of ``period``, which is LANES x VEC), float32."""
    logits = torch.randn(samples, classes, generator=generator)
    if rows_model == "clustered":
        for start in starts.unique().tolist():
            ids = torch.arange(start, start + classes, dtype=torch.float64)
            logits[starts == start] = 2 * logits[starts == start] - torch.log1p(ids).float()
    elif rows_model == "spaced":
        phase = torch.randint(0, period, (samples, 1), generator=generator)
        columns = phase + period * torch.arange(-(-classes // period))[None, :]
        logits.scatter_add_(1, columns.clamp(max=classes - 1),
                            (columns < classes).float() * 8.0)
    elif rows_model != "normal":
        raise ValueError(f"rows_model must be one of {ROW_MODELS}, got {rows_model!r}")
    return logits


def fallback(logits: torch.Tensor, k: int, lanes: int, vec: int, kpl: int,
             rows: int) -> tuple[float, float]:
    """The exact selection on these rows, in programs of ``rows`` of them each (consecutive):
    the fraction of programs that run it (those with a row where a key that fell off some
    thread's list of its ``kpl`` best groups reaches the row's k best; group g of VEC classes
    is thread g mod LANES's), and the mean number of its rounds where it runs (k less the
    fewest certain winners of the program's unsure rows: those above every dropped key)."""
    samples, classes = logits.shape
    groups = -(-classes // vec)
    keys = torch.nn.functional.pad(logits, (0, groups * vec - classes), value=-float("inf"))
    keys = keys.reshape(samples, groups, vec).amax(dim=2)
    by_thread = torch.nn.functional.pad(keys, (0, -groups % lanes), value=-float("inf"))
    by_thread = by_thread.reshape(samples, -1, lanes).sort(dim=1, descending=True).values
    if by_thread.shape[1] <= kpl:
        return 0.0, float(k)
    dropped = by_thread[:, kpl:, :].amax(dim=(1, 2))
    listed = by_thread[:, :kpl, :].reshape(samples, -1)
    # (fewer listed groups than k: the kernel's last winners are -inf)
    winners = torch.nn.functional.pad(listed.topk(min(k, listed.shape[1]), dim=1).values,
                                      (0, max(k - listed.shape[1], 0)), value=-float("inf"))
    unsure = (dropped >= winners[:, -1]) & (dropped > -float("inf"))
    certain = torch.where(unsure, (winners > dropped[:, None]).sum(dim=1), k)
    programs = samples - samples % rows
    runs = unsure[:programs].reshape(-1, rows).any(dim=1)
    rounds = k - certain[:programs].reshape(-1, rows).amin(dim=1)
    mean_rounds = rounds[runs].float().mean().item() if runs.any() else float(k)
    return runs.float().mean().item(), mean_rounds


def selection_rows(args: dict, rows_model: str = "normal", samples: int = 1024
                   ) -> torch.Tensor:
    """The rows whose selection ``profile_hints`` simulates for a launch of the kernel with
    ``args``: ``samples`` rows of ``rows_model`` (``ROW_MODELS``) as wide as the classes a
    program selects among (its rows, or its split: then each at a random split of its row)."""
    lanes, vec = args["LANES"], args["VEC"]
    classes = min(args["C"], args["split_chunks"] * lanes * vec or args["C"])
    generator = torch.Generator().manual_seed(0)
    if rows_model == "normal":  # (no split drawn: the same rows as before the other models)
        starts = torch.zeros(samples, dtype=torch.long)
    else:
        starts = torch.randint(0, args["splits"], (samples,), generator=generator) * classes
    return row_logits(rows_model, samples, classes, starts, lanes * vec, generator)


def profile_hints(kernel_name: str, args: dict, rows_model: str = "normal") -> dict[str, float]:
    """For ``ldrld profile``: the chunk counts of the kernel's loops, and how often the exact
    selection runs and its rounds there, simulated on 1024 rows of ``rows_model``
    (``selection_rows``, ``fallback``)."""
    if kernel_name != "_ldrld_fused_kernel":
        return {}
    hints = loop_counts(args["C"], args["LANES"], args["VEC"], args["SHIFTED"],
                        args["split_chunks"])
    hints["exact_selection"], hints["exact_rounds"] = fallback(
        selection_rows(args, rows_model), args["k"], args["LANES"], args["VEC"], args["KPL"],
        args["ROWS"])
    return hints
