"""The LDRLD kernels: the row losses and their gradients in one launch for rows of up to
``policy.MAX_FUSED`` classes (``_ldrld_rows_kernel``), and in two launches per wave of rows
for wider ones (``_ldrld_split_stats_kernel``, then ``_ldrld_split_grads_kernel``).

Layout. A program takes ROWS rows as a [ROWS, LANES, VEC] tile: LANES threads per row, each
reading VEC consecutive classes (one 16-byte access) per chunk of LANES x VEC classes.
Positions in a row are shifted by h = (row start mod VEC) when rows are not 16-byte aligned
(odd vocabularies such as 50,257), so that every chunk but the first and the last is
aligned: class c sits at position c + h. Each thread keeps running statistics of its own
classes and combines them with the row's other threads once per row: no reduction runs per
chunk. The row is streamed three times, the second and third reads from L2, each pass by
``_stream`` over the program's chunks (a shifted row's masked first chunk, the full chunks two
at a time, the odd one, the masked tail) with the pass's step:

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
   ``common._local_term_rows``, and the one-hot of the cross-entropy).
Gradients are stored already multiplied by the mean's 1 / count; backward only scales them
(``api._LDRLDFunction``) and skips that when the upstream gradient is 1.

Wide rows (past ``policy.MAX_FUSED``: 128K-262K vocabularies) run the same passes split over
several programs per row (``policy.split_launch``: each split whole chunks, at least
MIN_SPLIT_CHUNKS of them), in waves of rows whose logits fit in half the L2, two launches
per wave:
1. ``_ldrld_split_stats_kernel``: each split streams steps 1 and 2 over its chunks: its k
   best groups (the row's top-k classes lie in the union of the splits' k best groups, by the
   argument of step 1) and the sums of its other classes, written to its record in the
   workspace. The last of the row's
   programs to finish (a release-acquire ticket per row) merges the records: sums combined
   with their offsets, the exact top-k among the splits' winning groups, the rest of those
   groups' classes added to the sums; it stores the row's loss and, in the row record, what
   the gradients need (per-row factors, the top-k and target gradients).
2. ``_ldrld_split_grads_kernel``: each split streams step 3 over its chunks from the row
   record, then writes the selected classes and the target that lie in it.
Without MERGE the statistics kernel leaves the records to a caller that merges them itself
and writes the row record (``sharded``: a rank's slice of the classes, whose top-k depends on
the other ranks).
A sparse teacher (SPARSE, ``sparse``: per row K listed classes with their log-probabilities
lp at temperature 1, and one tail value for the C - K others) has no logits to stream: the
passes read the student alone. Ranked by the student, step 1 also gives each thread the best
key of its groups that are not winners (its list's head and the best key that fell off; the
exact rounds add one round for it), so step 2 runs against offsets fixed from the start: no
rescaling per group. Ranked by the teacher, the top-k is known before the launch (the
launcher's ``tensors.top``) and its groups are the winners; the offsets move as the stream
goes. Step 2 keeps z_u, z_s and, in w's place, the plain sum of the student's logits over
the remaining classes R; per row one pass over the listed classes (``_sparse_teacher_sums``)
gives the teacher's (m_v, z_v, w) over the listed classes of R, and the n unlisted classes
of R are one closed form (``_sparse_tail``): each is 2^a_tail, and sum (a_tail - a_u) over
them is n a_tail - (c2 s_unlisted - n m_u), with s_unlisted the sum over R less the listed
classes'. In step 3 the sweep writes every class as unlisted (beta T p_tail in t_shift's
place), then the selected classes, the target and the listed classes their own values
(``_store_listed``). Extra reads: K ids and values per row (twice), and the listed classes'
student logits (from L1/L2).
HBM traffic (``policy.hbm_bytes_per_element``): each input read once and each gradient
written once, when the wave's second and third reads hit in L2 (it holds half the L2 by
construction); per-row work is done once per split (the selection rounds) or once per row
(the merge). Extra memory: the workspace, wave rows x (splits x (8 + K_PAD) + 16 + 3 K_PAD)
float32, whatever the number of rows.
"""

from __future__ import annotations

from typing import NamedTuple

import triton
import triton.language as tl

from ldrld_kernels.kernels.common import LN2, LOG2E, _grad_scale, _local_term_rows, _log2

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


# ---- The kernels' grouped arguments ----------------------------------------------------------


class Tensors(NamedTuple):
    """Every kernel's pointers: the outputs, then the inputs (``launcher.kernel_arguments``
    passes the row losses for one that a call does not use)."""

    loss: object  # (rows,) float32
    parts: object  # (rows, 3) float32: ce, local, rntk
    grad_s: object  # (rows, C) gradients, when STUDENT_GRAD / TEACHER_GRAD
    grad_t: object
    student: object  # (rows, C) logits
    teacher: object
    target: object  # (rows,) int64, when HAS_TARGET
    grad_scale: object  # 0-d float32, when SCALE_GRAD
    # a sparse teacher (SPARSE; ``teacher`` is unused): each row's K listed ids (int32) with
    # their log-probabilities (float32), its tail log-probability (the unlisted classes',
    # float32) and, ranked by the teacher, its top-k classes in rank order (int32, C past k)
    ids: object  # (rows, K)
    logprobs: object  # (rows, K)
    tail: object  # (rows,)
    top: object  # (rows, K_PAD)


class Strides(NamedTuple):
    """Row and class strides of the logits, row strides of the gradients (whose classes are
    contiguous), in elements."""

    s_row: int
    s_col: int
    t_row: int
    t_col: int
    gs_row: int
    gt_row: int
    listed_row: int  # of a sparse teacher's ids and logprobs, and of its top-k
    top_row: int


class Flags(NamedTuple):
    """What a call computes: one constexpr of every kernel."""

    HAS_TARGET: bool  # a cross-entropy term
    RANK_BY_TEACHER: bool  # the top-k by the teacher's logits (else the student's)
    STUDENT_GRAD: bool
    TEACHER_GRAD: bool
    SCALE_GRAD: bool  # gradients times *grad_scale (the mean's 1 / count)
    T_POW: int  # T when it is 1, 2 or 4 (the cross-entropy from (2^a_u)^T), else 0
    SPARSE: bool  # the teacher as its K listed classes and a tail (``sparse``), not logits


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


# ---- Rows and chunks -------------------------------------------------------------------------


@triton.jit
def _rows(rows, n_rows, strides, ROWS: tl.constexpr, VEC: tl.constexpr,
          ROW_ALIGN: tl.constexpr, SHIFTED: tl.constexpr):
    """The program's ``rows`` as (rows, row_ok, rows_in, shift, s_row, t_row), [ROWS] each.
    Rows past the end read the last row (nothing of theirs is stored): no load needs a row
    mask. Position p of a row is at its start (``s_row``, ``t_row``) + p; SHIFTED rows (every
    input and gradient row of one stride) start ``shift`` before their first class."""
    row_ok = rows < n_rows
    rows_in = tl.minimum(rows, n_rows - 1)
    if SHIFTED:
        shift = (rows_in * strides.s_row % VEC).to(tl.int32)
        s_row = tl.multiple_of(rows_in * strides.s_row - shift, VEC)
        t_row = tl.multiple_of(rows_in * strides.t_row - shift, VEC)
    else:
        shift = tl.zeros([ROWS], tl.int32)
        s_row = tl.multiple_of(rows_in * strides.s_row, ROW_ALIGN)
        t_row = tl.multiple_of(rows_in * strides.t_row, ROW_ALIGN)
    return rows, row_ok, rows_in, shift, s_row, t_row


@triton.jit
def _whole_span(C, BLOCK: tl.constexpr, VEC: tl.constexpr, SHIFTED: tl.constexpr):
    """A program's chunks of whole rows: (lo, hi, full_lo, full_hi, tail_lo), all of them.
    Chunks [full_lo, full_hi) lie inside every row of the tile; the first (when shifted) and
    [tail_lo, hi) are masked."""
    FIRST: tl.constexpr = 1 if SHIFTED else 0
    last = tl.maximum(C // BLOCK, FIRST)
    end = tl.cdiv(C + (VEC - 1 if SHIFTED else 0), BLOCK)
    return 0, end, FIRST, last, last


@triton.jit
def _split_span(split, split_chunks, C, BLOCK: tl.constexpr, VEC: tl.constexpr,
                SHIFTED: tl.constexpr):
    """The chunks of split ``split`` of a wide row, as ``_whole_span``."""
    FIRST: tl.constexpr = 1 if SHIFTED else 0
    last = tl.maximum(C // BLOCK, FIRST)
    end = tl.cdiv(C + (VEC - 1 if SHIFTED else 0), BLOCK)
    lo = split * split_chunks
    hi = tl.minimum(lo + split_chunks, end)
    full_lo = tl.maximum(lo, FIRST)
    return lo, hi, full_lo, tl.maximum(tl.minimum(hi, last), full_lo), tl.maximum(lo, last)


@triton.jit
def _stream(STEP: tl.constexpr, state, inputs, span, LANES: tl.constexpr, VEC: tl.constexpr,
            KPL: tl.constexpr, FLAGS: tl.constexpr, VECTOR: tl.constexpr,
            SHIFTED: tl.constexpr, S_PACKED: tl.constexpr, T_PACKED: tl.constexpr,
            PAIRED: tl.constexpr = True):
    """One pass over the chunks of ``span``: ``state = STEP(state, inputs, chunk, MASKED,
    S_PACKED, T_PACKED, LANES, VEC, KPL, FLAGS, VECTOR)`` for each, the full chunks unmasked
    (PAIRED: two per iteration, half the loop's own instructions), the others masked (and
    read unpacked). Returns the state."""
    lo, hi, full_lo, full_hi, tail_lo = span
    if SHIFTED:  # noqa: SIM102 (compile-time, then run-time)
        if lo == 0:
            state = STEP(state, inputs, 0, True, False, False, LANES, VEC, KPL, FLAGS, VECTOR)
    n_full = full_hi - full_lo
    if PAIRED:
        for pair in range(n_full // 2):  # trips: full_pairs
            chunk = full_lo + 2 * pair
            state = STEP(state, inputs, chunk, False, S_PACKED, T_PACKED, LANES, VEC, KPL,
                         FLAGS, VECTOR)
            state = STEP(state, inputs, chunk + 1, False, S_PACKED, T_PACKED, LANES, VEC, KPL,
                         FLAGS, VECTOR)
        if n_full % 2 == 1:  # runs: full_odd
            state = STEP(state, inputs, full_hi - 1, False, S_PACKED, T_PACKED, LANES, VEC,
                         KPL, FLAGS, VECTOR)
    else:
        for chunk in range(full_lo, full_hi):  # trips: 2 * full_pairs + full_odd
            state = STEP(state, inputs, chunk, False, S_PACKED, T_PACKED, LANES, VEC, KPL,
                         FLAGS, VECTOR)
    for chunk in range(tail_lo, hi):  # trips: masked_tail_chunks
        state = STEP(state, inputs, chunk, True, False, False, LANES, VEC, KPL, FLAGS, VECTOR)
    return state


# ---- 1. Selection ----------------------------------------------------------------------------


@triton.jit
def _insert(lists, x, gx, KPL: tl.constexpr):
    """Insert group key (x, gx) into a thread's sorted list of its KPL (2 to 5) best groups,
    ``lists`` = ((v0, .. v4), (g0, .. g4), dropped), and keep the best value that fell off the
    list in ``dropped``. Groups arrive in increasing id, so a tie never displaces an earlier
    group: only x > v counts."""
    values, groups, dropped = lists
    v0, v1, v2, v3, v4 = values
    g0, g1, g2, g3, g4 = groups
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
    return (v0, v1, v2, v3, v4), (g0, g1, g2, g3, g4), dropped


@triton.jit
def _select_step(lists, inputs, chunk, MASKED: tl.constexpr, S_PACKED: tl.constexpr,
                 T_PACKED: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
                 KPL: tl.constexpr, FLAGS: tl.constexpr, VECTOR: tl.constexpr):
    """One chunk of the selection pass (a ``_stream`` step): each thread's best groups.
    ``inputs``: the ranking logits (ptr, base, shift, C, stride_col), read packed when
    S_PACKED."""
    ptr, base, shift, C, stride_col = inputs
    key = _load_chunk(ptr, base, chunk, shift, C, stride_col, LANES, VEC, MASKED, S_PACKED,
                      VECTOR)
    group = chunk * LANES + tl.arange(0, LANES)[None, :]
    return _insert(lists, tl.max(key, axis=2), group, KPL)


@triton.jit
def _after_step(best, inputs, chunk, MASKED: tl.constexpr, S_PACKED: tl.constexpr,
                T_PACKED: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
                KPL: tl.constexpr, FLAGS: tl.constexpr, VECTOR: tl.constexpr):
    """One chunk of an exact-selection round (a ``_stream`` step): each thread's best group
    (best_v, best_g) that ranks after (theta_v, theta_g), ties to the smaller group.
    ``inputs``: the ranking logits as ``_select_step``'s, then theta_v, theta_g."""
    ptr, base, shift, C, stride_col, theta_v, theta_g = inputs
    best_v, best_g = best
    key = _load_chunk(ptr, base, chunk, shift, C, stride_col, LANES, VEC, MASKED, False,
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
def _pop(lists, theta_g):
    """The threads' lists with the head of group ``theta_g`` (per row) taken off."""
    values, groups, dropped = lists
    v0, v1, v2, v3, v4 = values
    g0, g1, g2, g3, g4 = groups
    pop = g0 == theta_g[:, None]
    v0, g0 = tl.where(pop, v1, v0), tl.where(pop, g1, g0)
    v1, g1 = tl.where(pop, v2, v1), tl.where(pop, g2, g1)
    v2, g2 = tl.where(pop, v3, v2), tl.where(pop, g3, g2)
    v3, g3 = tl.where(pop, v4, v3), tl.where(pop, g4, g3)
    v4, g4 = tl.where(pop, -float("inf"), v4), tl.where(pop, NO_GROUP, g4)
    return (v0, v1, v2, v3, v4), (g0, g1, g2, g3, g4), dropped


@triton.jit
def _select(inputs, span, row_ok, k, ROWS: tl.constexpr, LANES: tl.constexpr,
            VEC: tl.constexpr, KPL: tl.constexpr, K_PAD: tl.constexpr, FLAGS: tl.constexpr,
            VECTOR: tl.constexpr, SHIFTED: tl.constexpr, PACKED: tl.constexpr,
            WHOLE: tl.constexpr):
    """Step 1 over the chunks of ``span`` (WHOLE rows, or a split of each): the ids of the k
    best groups by the ranking logits ``inputs`` (as ``_select_step`` takes them), in rank
    order, [ROWS, K_PAD] (NO_GROUP past them), the k-th (value, group), [ROWS] each, and
    each thread's best key of the groups that are not winners, [ROWS, LANES] (exact when
    FLAGS.SPARSE: then the statistics take their offsets from it)."""
    ranks = tl.arange(0, K_PAD)[None, :]
    neg = tl.full([ROWS, LANES], -float("inf"), tl.float32)
    empty = tl.full([ROWS, LANES], NO_GROUP, tl.int32)
    lists = ((neg, neg, neg, neg, neg), (empty, empty, empty, empty, empty), neg)
    lists = _stream(_select_step, lists, inputs, span, LANES, VEC, KPL, FLAGS, VECTOR,
                    SHIFTED, PACKED, PACKED)

    # The k best groups: k rounds, each taking the best head of the threads' sorted lists.
    win_g = tl.full([ROWS, K_PAD], NO_GROUP, tl.int32)
    win_v = tl.full([ROWS, K_PAD], -float("inf"), tl.float32)
    theta_v = tl.full([ROWS], -float("inf"), tl.float32)
    theta_g = tl.full([ROWS], NO_GROUP, tl.int32)
    for r in range(k):  # trips: k
        values, groups, dropped = lists
        theta_v, theta_g = _best_group(values[0], groups[0])
        lists = _pop(lists, theta_g)
        win_g = tl.where(ranks == r, theta_g[:, None], win_g)
        win_v = tl.where(ranks == r, theta_v[:, None], win_v)
    # Exact unless a key that fell off some thread's list ranks with the k (ties count as
    # unsure). A thread's groups that are not winners are those left on its list and those
    # that fell off it.
    dropped = lists[2]
    lane_max = tl.maximum(lists[0][0], dropped)
    unsure = (dropped >= theta_v[:, None]) & (dropped > -float("inf")) & row_ok[:, None]
    if tl.max(tl.max(unsure.to(tl.int32), axis=1), axis=0) > 0:  # runs: exact_selection
        # A winner above every key that fell off a list is certain, at its rank (the heads
        # come out in rank order, and no group off the lists ranks above those keys). The
        # ranks from the program's fewest certain winners on, exactly: one pass over the
        # chunks each for the best group after the last winner (for a row with more certain
        # winners, the same ones again).
        certain = tl.sum((win_v > tl.max(dropped, axis=1)[:, None]).to(tl.int32), axis=1)
        r0 = tl.min(tl.where(tl.max(unsure.to(tl.int32), axis=1) > 0, certain, k), axis=0)
        at = ranks == r0 - 1
        theta_v = tl.where(r0 > 0, tl.max(tl.where(at, win_v, -float("inf")), axis=1),
                           float("inf"))
        theta_g = tl.where(r0 > 0, tl.max(tl.where(at, win_g, -1), axis=1), -1)
        ptr, base, shift, C, stride_col = inputs
        # (a sparse teacher's statistics: one round more, each thread's best after the k-th)
        LANE_MAX: tl.constexpr = FLAGS.SPARSE
        for r in range(r0, k + LANE_MAX):  # trips: exact_rounds + SPARSE
            best = (neg, empty)
            after = (ptr, base, shift, C, stride_col, theta_v, theta_g)
            if WHOLE:  # the full chunks unmasked (of an unaligned row, half the cost)
                best = _stream(_after_step, best, after, span, LANES, VEC, KPL, FLAGS, VECTOR,
                               SHIFTED, False, False, PAIRED=False)
            else:  # a split's few chunks: one masked loop compiles to less
                lo, hi, _, _, _ = span
                for chunk in range(lo, hi):  # trips: all_chunks
                    best = _after_step(best, after, chunk, True, False, False, LANES, VEC, KPL,
                                       FLAGS, VECTOR)
            if r < k:
                theta_v, theta_g = _best_group(best[0], best[1])
                win_g = tl.where(ranks == r, theta_g[:, None], win_g)
            lane_max = best[0]
    return win_g, theta_v, theta_g, lane_max


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


# ---- 2. Statistics of the remaining classes --------------------------------------------------


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
def _ce_softmax(s, e_u, m_s, FLAGS: tl.constexpr):
    """The cross-entropy's unnormalized softmax at logits ``s`` as the sweep takes it:
    2^(s log2(e) - m_s), or, when T is 1, 2 or 4, ``e_u`` = 2^(s c2 - m_u) to the power T
    (then m_s = T m_u)."""
    if FLAGS.T_POW == 0:
        e_s = tl.exp2(tl.fma(s, LOG2E, -m_s))
    else:
        e_s = _int_power(e_u, FLAGS.T_POW)
    return e_s


@triton.jit
def _stats_step(sums, inputs, chunk, MASKED: tl.constexpr, S_PACKED: tl.constexpr,
                T_PACKED: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
                KPL: tl.constexpr, FLAGS: tl.constexpr, VECTOR: tl.constexpr):
    """One chunk of the remaining-class statistics (a ``_stream`` step): each thread's sums
    (off_u, off_v, off_s, z_u, z_v, w, z_s) of the classes outside the winning groups, those
    ranked at or above (theta_v, theta_g). ``inputs``: (student_ptr, teacher_ptr, s_base,
    t_base, shift, C, stride_s_col, stride_t_col, c2, theta_v, theta_g), ``c2`` = log2(e) / T.
    ``w`` sums 2^a_v (a_v - a_u) against the offsets of the moment, so moving them moves w by
    z_v times the change of off_v - off_u."""
    (student_ptr, teacher_ptr, s_base, t_base, shift, C, stride_s_col, stride_t_col, c2,
     theta_v, theta_g) = inputs
    off_u, off_v, off_s, z_u, z_v, w, z_s = sums
    s = _load_chunk(student_ptr, s_base, chunk, shift, C, stride_s_col, LANES, VEC, MASKED,
                    S_PACKED, VECTOR)
    t = _load_chunk(teacher_ptr, t_base, chunk, shift, C, stride_t_col, LANES, VEC, MASKED,
                    T_PACKED, VECTOR)
    gm_s = tl.max(s, axis=2)
    gm_t = tl.max(t, axis=2)
    group = chunk * LANES + tl.arange(0, LANES)[None, :]
    winner = _ranks_at_or_above(gm_t if FLAGS.RANK_BY_TEACHER else gm_s, group, theta_v,
                                theta_g)
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
    if FLAGS.HAS_TARGET:
        if FLAGS.T_POW == 0:
            # an offset of its own and an exponential per class
            off_s, scale_s = _rescale(off_s, gm_s * LOG2E)
            e_s = tl.exp2(tl.fma(s, LOG2E, -off_s[:, :, None]))
        else:
            off_s = off_u * FLAGS.T_POW
            scale_s = _int_power(scale_u, FLAGS.T_POW)
            e_s = _int_power(e_u, FLAGS.T_POW)
        z_s = z_s * scale_s + tl.where(winner, 0.0, tl.sum(e_s, axis=2))
    return off_u, off_v, off_s, z_u, z_v, w, z_s


@triton.jit
def _sparse_stats_step(sums, inputs, chunk, MASKED: tl.constexpr, S_PACKED: tl.constexpr,
                       T_PACKED: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
                       KPL: tl.constexpr, FLAGS: tl.constexpr, VECTOR: tl.constexpr):
    """``_stats_step`` against a sparse teacher: the student's sums only, and in w's place the
    sum of its logits over the same classes, every one taken as unlisted (the listed ones are
    corrected per row, ``_sparse_teacher_sums``); off_v and z_v stay unused. ``inputs``:
    (student_ptr, s_base, shift, C, stride_s_col, c2, theta_v, theta_g, win_g, and the first
    offsets of u and s); the winners are the groups ranked at or above (theta_v, theta_g) by
    the student, whose selection gave each thread's best key outside them, and so offsets
    that stay; or, ranked by the teacher, the groups of its top-k, ``win_g``, and offsets
    moved as the stream goes."""
    student_ptr, s_base, shift, C, stride_s_col, c2, theta_v, theta_g, win_g, _, _ = inputs
    off_u, off_v, off_s, z_u, z_v, sum_s, z_s = sums
    s = _load_chunk(student_ptr, s_base, chunk, shift, C, stride_s_col, LANES, VEC, MASKED,
                    S_PACKED, VECTOR)
    gm_s = tl.max(s, axis=2)
    group = chunk * LANES + tl.arange(0, LANES)[None, :]
    if FLAGS.RANK_BY_TEACHER:
        winner = tl.max((group[:, :, None] == win_g[:, None, :]).to(tl.int32), axis=2) > 0
        gm_s = tl.where(winner, -float("inf"), gm_s)
        off_u, scale_u = _rescale(off_u, gm_s * c2)
        z_u *= scale_u
    else:
        winner = _ranks_at_or_above(gm_s, group, theta_v, theta_g)
    e_u = tl.exp2(tl.fma(s, c2, -off_u[:, :, None]))
    z_u += tl.where(winner, 0.0, tl.sum(e_u, axis=2))
    if MASKED:  # (positions outside the rows read -inf, and are no classes)
        pos = _positions(chunk, LANES, VEC)
        group_s = tl.sum(tl.where((pos >= shift) & (pos < C + shift), s, 0.0), axis=2)
    else:
        group_s = tl.sum(s, axis=2)
    sum_s = sum_s + tl.where(winner, 0.0, group_s)
    if FLAGS.HAS_TARGET:
        if FLAGS.T_POW == 0:
            if FLAGS.RANK_BY_TEACHER:
                off_s, scale_s = _rescale(off_s, gm_s * LOG2E)
                z_s *= scale_s
            e_s = tl.exp2(tl.fma(s, LOG2E, -off_s[:, :, None]))
        else:
            if FLAGS.RANK_BY_TEACHER:
                off_s = off_u * FLAGS.T_POW
                z_s *= _int_power(scale_u, FLAGS.T_POW)
            e_s = _int_power(e_u, FLAGS.T_POW)
        z_s += tl.where(winner, 0.0, tl.sum(e_s, axis=2))
    return off_u, off_v, off_s, z_u, z_v, sum_s, z_s


@triton.jit
def _combine(offset, total):
    """Per row, the threads' (whole-number offset, sum 2^(x - offset)) as one."""
    m = tl.max(offset, axis=1)
    return m, tl.sum(total * _pow2_int(offset - m[:, None]), axis=1)


@triton.jit
def _row_sums(sums, SPARSE: tl.constexpr):
    """Per row, the [ROWS, N] parts' (threads' or splits') sums (off_u, off_v, off_s, z_u,
    z_v, w, z_s) as one: (m_u, z_u, m_v, z_v, w, m_s, z_s). Sums are kept as (whole-number
    base-2 offset m, z = sum 2^(x c2 - m)): folding m and log2 z into one float would cost
    1e-3 per exponent at logits of 1e4. (SPARSE: w is a plain sum of logits.)"""
    off_u, off_v, off_s, z_u, z_v, w, z_s = sums
    m_u, z_u_row = _combine(off_u, z_u)
    m_v, z_v_row = _combine(off_v, z_v)
    if SPARSE:
        w = tl.sum(w, axis=1)
    else:
        w = tl.sum(_move_w(w, z_v, off_u, off_v, m_u[:, None], m_v[:, None]), axis=1)
    m_s, z_s_row = _combine(off_s, z_s)
    return m_u, z_u_row, m_v, z_v_row, w, m_s, z_s_row


@triton.jit
def _statistics(inputs, span, ROWS: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
                KPL: tl.constexpr, FLAGS: tl.constexpr, VECTOR: tl.constexpr,
                SHIFTED: tl.constexpr, S_PACKED: tl.constexpr, T_PACKED: tl.constexpr):
    """Step 2 over the chunks of ``span``: the row's sums of the classes outside its winning
    groups, (m_u, z_u, m_v, z_v, w, m_s, z_s), [ROWS] each; ``inputs`` as ``_stats_step``'s."""
    off = tl.full([ROWS, LANES], -1e30, tl.float32)
    zero = tl.zeros([ROWS, LANES], tl.float32)
    if FLAGS.SPARSE:  # (its first offsets: the inputs' last two)
        sums = _stream(_sparse_stats_step, (inputs[9], off, inputs[10], zero, zero, zero, zero),
                       inputs, span, LANES, VEC, KPL, FLAGS, VECTOR, SHIFTED, S_PACKED,
                       T_PACKED)
    else:
        sums = _stream(_stats_step, (off, off, off, zero, zero, zero, zero), inputs, span,
                       LANES, VEC, KPL, FLAGS, VECTOR, SHIFTED, S_PACKED, T_PACKED)
    return _row_sums(sums, FLAGS.SPARSE)


@triton.jit
def _merge_classes(m, z, x, c2):
    """Add classes x ([ROWS, N] logits, -inf for none) to per-row sums kept as (whole-number
    base-2 offset m, z = sum 2^(x c2 - m)): the new (m, z)."""
    new, factor = _rescale(m, tl.max(x, axis=1) * c2)
    return new, z * factor + tl.sum(tl.exp2(tl.fma(x, c2, -new[:, None])), axis=1)


# ---- 3. Gradients ----------------------------------------------------------------------------


@triton.jit
def _grad_values(s, t, c2, per_row, FLAGS: tl.constexpr):
    """The remaining-class gradient formulas (see the module docstring) at logits s, t, with
    the row's (counted, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift) ``per_row``. Against a sparse
    teacher (``t`` unused) every class is taken as unlisted, whose p times beta T is the
    row's constant ``t_shift`` holds then; the listed ones are written again afterwards."""
    _, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift = per_row
    a_u = tl.fma(s, c2, -m_u)
    if FLAGS.SPARSE:
        e_u = tl.exp2(a_u)
        a_v = a_u
        e_v = e_u
    else:  # (in this order: the dense sweep's code as it was profiled)
        a_v = tl.fma(t, c2, -m_v)
        e_u = tl.exp2(a_u)
        e_v = tl.exp2(a_v)
    g_s = tl.zeros_like(s)
    g_t = tl.zeros_like(t)
    if FLAGS.STUDENT_GRAD:
        if FLAGS.SPARSE:
            g_s = e_u * w_q - t_shift
        else:
            g_s = e_u * w_q - e_v * w_p
        if FLAGS.HAS_TARGET:
            g_s += w_ce * _ce_softmax(s, e_u, m_s, FLAGS)
    if FLAGS.TEACHER_GRAD:
        # padding has e_v = 0 and a_v - a_u = nan: max() drops the nan
        g_t = e_v * w_p * tl.fma(tl.maximum(a_v - a_u, -3.0e38), LN2, t_shift)
    return g_s, g_t


@triton.jit
def _store_grads(grad_s_ptr, grad_t_ptr, gs_base, gt_base, pos, g_s, g_t, write, counted,
                 FLAGS: tl.constexpr):
    """Gradients where ``write``: the values in rows that count, zeros in the others (a
    second store: a select would unpack the 16-bit values)."""
    if FLAGS.STUDENT_GRAD:
        ptrs = grad_s_ptr + gs_base + pos
        tl.store(ptrs, g_s.to(grad_s_ptr.dtype.element_ty), mask=write & counted)
        tl.store(ptrs, tl.zeros_like(g_s).to(grad_s_ptr.dtype.element_ty),
                 mask=write & ~counted)
    if FLAGS.TEACHER_GRAD:
        ptrs = grad_t_ptr + gt_base + pos
        tl.store(ptrs, g_t.to(grad_t_ptr.dtype.element_ty), mask=write & counted)
        tl.store(ptrs, tl.zeros_like(g_t).to(grad_t_ptr.dtype.element_ty),
                 mask=write & ~counted)


@triton.jit
def _grad_step(nothing, inputs, chunk, MASKED: tl.constexpr, S_PACKED: tl.constexpr,
               T_PACKED: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
               KPL: tl.constexpr, FLAGS: tl.constexpr, VECTOR: tl.constexpr):
    """One chunk of the gradient sweep (a ``_stream`` step, no state). ``inputs``: (grad_s_ptr,
    grad_t_ptr, gs_base, gt_base, student_ptr, teacher_ptr, s_base, t_base, shift, C,
    stride_s_col, stride_t_col, row_ok, c2, per_row), the per-row values [ROWS, 1, 1] each.
    With VECTOR rows a masked chunk writes only the groups that lie wholly inside the row, 16
    bytes at once; the two partial groups at the row's ends are written by
    ``_grad_boundary``."""
    (grad_s_ptr, grad_t_ptr, gs_base, gt_base, student_ptr, teacher_ptr, s_base, t_base, shift,
     C, stride_s_col, stride_t_col, row_ok, c2, per_row) = inputs
    s = _load_chunk(student_ptr, s_base, chunk, shift, C, stride_s_col, LANES, VEC, MASKED,
                    S_PACKED, VECTOR)
    if FLAGS.SPARSE:
        t = s
    else:
        t = _load_chunk(teacher_ptr, t_base, chunk, shift, C, stride_t_col, LANES, VEC, MASKED,
                        T_PACKED, VECTOR)
    g_s, g_t = _grad_values(s, t, c2, per_row, FLAGS)
    pos = _positions(chunk, LANES, VEC)
    if MASKED:
        if VECTOR:
            group = chunk * LANES + tl.arange(0, LANES)[None, :, None]
            write = row_ok & (group * VEC >= shift) & (group * VEC + VEC <= C + shift)
        else:
            write = row_ok & (pos >= shift) & (pos < C + shift)
    else:
        write = tl.broadcast_to(row_ok, [row_ok.shape[0], LANES, VEC])
    _store_grads(grad_s_ptr, grad_t_ptr, gs_base, gt_base, pos, g_s, g_t, write, per_row[0],
                 FLAGS)
    return nothing


@triton.jit
def _grad_boundary(inputs, shift, first_here, last_here, VEC: tl.constexpr,
                   FLAGS: tl.constexpr):
    """The gradients of the two groups that hold a row's ends but not only its classes: the
    first (positions below the shift; written when ``first_here``, the program holds the
    row's first chunk) and the last ((C + shift) not a multiple of VEC; when ``last_here``);
    a [ROWS, 2, VEC] tile, element by element. ``inputs`` as ``_grad_step``'s, ``shift``
    [ROWS]."""
    (grad_s_ptr, grad_t_ptr, gs_base, gt_base, student_ptr, teacher_ptr, s_base, t_base, _, C,
     _, _, row_ok, c2, per_row) = inputs
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
    if FLAGS.SPARSE:
        t = s
    else:
        t = _load_groups(teacher_ptr, t_base, groups, partial, shift[:, None, None], C, 1, VEC,
                         True)
    g_s, g_t = _grad_values(s, t, c2, per_row, FLAGS)
    pos = groups[:, :, None] * VEC + tl.arange(0, VEC)[None, None, :]
    shift3 = shift[:, None, None]
    write = row_ok & partial[:, :, None] & (pos >= shift3) & (pos < C + shift3)
    _store_grads(grad_s_ptr, grad_t_ptr, gs_base, gt_base, pos, g_s, g_t, write, per_row[0],
                 FLAGS)


# ---- A sparse teacher ------------------------------------------------------------------------
# Its row is K listed classes (ids in increasing order, their log-probabilities) and one tail
# log-probability for the C - K others (``sparse``). The passes stream the student alone and
# take every class as unlisted; the listed ones are corrected per row, K at a time.


@triton.jit
def _listed_block(tensors, strides, row, start, K, KB: tl.constexpr):
    """Listed classes start .. start + KB of each row: (valid, ids, logprobs, positions),
    [ROWS, KB] each."""
    _, _, rows_in, shift, _, _ = row
    j = start + tl.arange(0, KB)[None, :]
    ok = j < K
    offset = (rows_in * strides.listed_row)[:, None] + j
    ids = tl.load(tensors.ids + offset, mask=ok, other=0)
    logprobs = tl.load(tensors.logprobs + offset, mask=ok, other=-float("inf")).to(tl.float32)
    return ok, ids, logprobs, ids + shift[:, None]


@triton.jit
def _sparse_teacher_sums(tensors, strides, row, c2, m_u, sum_rest, tail, top_c, y, K,
                         KB: tl.constexpr):
    """One pass over a sparse teacher's listed classes, KB at a time (the student at them
    from L1/L2), for the teacher's side of the remaining classes R as the dense statistics
    keep it: (m_v, z_v, w), z_v = sum_R 2^a_v and w = sum_R 2^a_v (a_v - a_u), against the
    whole-number offsets m_v and (the student's, final) m_u. The n unlisted classes of R, all
    at the tail, in closed form: sum_R (a_tail - a_u) over them is n a_tail - (c2 s_unl - n
    m_u) with s_unl, the sum of the student's logits over them, ``sum_rest`` (over R) less
    the listed ones'. Also the teacher at the top-k classes ``top_c`` (C for none) and at the
    target ``y``: (value, listed), the tail where not listed."""
    _, _, _, _, s_row, _ = row
    m_v = tl.full(m_u.shape, -1e30, tl.float32)
    z_v = tl.zeros_like(m_u)
    w = tl.zeros_like(m_u)
    top_t = tl.full(top_c.shape, -float("inf"), tl.float32)
    top_listed = tl.zeros(top_c.shape, tl.int1)
    t_y = tl.full(m_u.shape, -float("inf"), tl.float32)
    y_listed = tl.zeros(m_u.shape, tl.int1)
    for start in range(0, K, KB):  # trips: cdiv(K, KB)
        ok, ids, logprobs, pos = _listed_block(tensors, strides, row, start, K, KB)
        is_top = (ids[:, :, None] == top_c[:, None, :]) & ok[:, :, None]
        top_t = tl.maximum(top_t, tl.max(tl.where(is_top, logprobs[:, :, None],
                                                  -float("inf")), axis=1))
        top_listed = top_listed | (tl.max(is_top.to(tl.int32), axis=1) > 0)
        is_y = ok & (ids == y[:, None])
        t_y = tl.maximum(t_y, tl.max(tl.where(is_y, logprobs, -float("inf")), axis=1))
        y_listed = y_listed | (tl.max(is_y.to(tl.int32), axis=1) > 0)
        rest = ok & (tl.max(is_top.to(tl.int32), axis=2) == 0)
        s_i = _load(tensors.student, s_row[:, None], pos, rest, strides.s_col)
        sum_rest -= tl.sum(tl.where(rest, s_i, 0.0), axis=1)
        x = tl.where(rest, logprobs, -float("inf"))
        new, factor = _rescale(m_v, tl.max(x, axis=1) * c2)
        w = _move_w(w, z_v, m_u, m_v, m_u, new)
        a_v = tl.fma(x, c2, -new[:, None])
        e_v = tl.exp2(a_v)
        z_v = z_v * factor + tl.sum(e_v, axis=1)
        w += tl.sum(tl.where(e_v > 0, e_v * (a_v - tl.fma(s_i, c2, -m_u[:, None])), 0.0), axis=1)
        m_v = new
    return m_v, z_v, w, sum_rest, tl.where(top_listed, top_t, tail[:, None]), top_listed, \
        tl.where(y_listed, t_y, tail), y_listed


@triton.jit
def _sparse_tail(m_v, z_v, w, m_u, c2, tail, unlisted, sum_unlisted):
    """(m_v, z_v, w) with the ``unlisted`` classes of R added, each at the ``tail``, whose
    student logits sum to ``sum_unlisted``: 2^a_tail each and sum (a_tail - a_u) =
    n a_tail - (c2 sum_unlisted - n m_u)."""
    has = unlisted > 0
    n = unlisted.to(tl.float32)
    new, factor = _rescale(m_v, tl.where(has, tail * c2, -float("inf")))
    w = _move_w(w, z_v, m_u, m_v, m_u, new)
    z_v *= factor
    a_tail = tl.fma(tail, c2, -new)
    e_tail = tl.exp2(a_tail)
    z_v += tl.where(has, n * e_tail, 0.0)
    w += tl.where(has, e_tail * (n * a_tail - tl.fma(sum_unlisted, c2, -n * m_u)), 0.0)
    return new, z_v, w


@triton.jit
def _store_listed(tensors, strides, settings, row, gs_row, per_row, own, lo_pos, hi_pos, K,
                  FLAGS: tl.constexpr, KB: tl.constexpr):
    """After the sweep, which wrote every class as unlisted: the listed classes outside the
    top-k with positions in [lo_pos, hi_pos) get their own gradients (the target's one-hot
    too, when it is one of them), in rows that count."""
    _, row_ok, _, _, s_row, _ = row
    counted, m_u, m_v, m_s, w_q, w_p, w_ce, _ = per_row
    top_c, _, _, y_p, _, _ = own
    c2 = LOG2E / settings.temperature
    if FLAGS.HAS_TARGET:
        ce_w = settings.ce_weight * _grad_scale(tensors.grad_scale, FLAGS.SCALE_GRAD)
    for start in range(0, K, KB):  # trips: cdiv(K, KB)
        ok, ids, logprobs, pos = _listed_block(tensors, strides, row, start, K, KB)
        top = tl.max((ids[:, :, None] == top_c[:, None, :]).to(tl.int32), axis=2) > 0
        write = ok & ~top & (counted & row_ok)[:, None] & (pos >= lo_pos) & (pos < hi_pos)
        s_i = _load(tensors.student, s_row[:, None], pos, write, strides.s_col)
        e_u = tl.exp2(tl.fma(s_i, c2, -m_u[:, None]))
        g = w_q[:, None] * e_u - w_p[:, None] * tl.exp2(tl.fma(logprobs, c2, -m_v[:, None]))
        if FLAGS.HAS_TARGET:  # (the cross-entropy's softmax as the sweep takes it)
            g += w_ce[:, None] * _ce_softmax(s_i, e_u, m_s[:, None], FLAGS)
            g -= tl.where(pos == y_p[:, None], ce_w, 0.0)
        tl.store(tensors.grad_s + gs_row[:, None] + pos,
                 g.to(tensors.grad_s.dtype.element_ty), mask=write)


# ---- Per row ---------------------------------------------------------------------------------


@triton.jit
def _row_values(tensors, strides, C, K, settings, row, c2, sums, win_g, ROWS: tl.constexpr,
                VEC: tl.constexpr, K_PAD: tl.constexpr, FLAGS: tl.constexpr,
                VECTOR: tl.constexpr, KB: tl.constexpr):
    """From the row's ``sums`` (``_row_sums``) of the classes outside its winning groups
    ``win_g`` ([ROWS, N] group ids, NO_GROUP for none): the exact top-k, the row's loss and
    parts (stored), and what the gradients need: ``per_row`` = (counted, m_u, m_v, m_s, w_q,
    w_p, w_ce, t_shift) for the sweep, and ``own`` = (the top-k classes (C past k), their
    student and teacher gradients, the target's position, whether it needs its own value
    (not selected) and that value), the classes written after the sweep. A sparse teacher's
    (K listed classes) values at those classes are looked up; its side of the remaining
    classes comes from ``_sparse_teacher_sums``, and ``t_shift`` holds beta T p of an
    unlisted class instead (it has no gradient of its own)."""
    rows, row_ok, rows_in, shift, s_row, t_row = row
    m_u, z_u, m_v, z_v, w, m_s, z_s = sums
    k = settings.k
    ranks = tl.arange(0, K_PAD)[None, :]
    shift3 = shift[:, None, None]
    # The winning groups' classes (16-byte loads from L1/L2), the exact top-k among them in
    # rank order, and the others, which join the remaining classes (all of them join the
    # cross-entropy's).
    win_ok = win_g != NO_GROUP
    gathered_p = tl.where(win_ok, win_g, 0)[:, :, None] * VEC + tl.arange(0, VEC)[None, None, :]
    gathered_ok = win_ok[:, :, None] & (gathered_p >= shift3) & (gathered_p < C + shift3)
    gs = _load_groups(tensors.student, s_row[:, None, None], win_g, win_ok, shift3, C,
                      strides.s_col, VEC, VECTOR)
    if FLAGS.SPARSE:
        tail = tl.load(tensors.tail + rows_in)
        if FLAGS.RANK_BY_TEACHER:  # (known: the gathered classes but those are the others)
            top_c = _teacher_top(tensors, strides, rows_in, K_PAD)
            selected = (gathered_p - shift3)[:, :, :, None] == top_c[:, None, None, :]
            available = gathered_ok & (tl.max(selected.to(tl.int32), axis=3) == 0)
        else:
            top_c, available = _top_classes(gs, gathered_p - shift3, gathered_ok, k, C, K_PAD)
    else:
        gt = _load_groups(tensors.teacher, t_row[:, None, None], win_g, win_ok, shift3, C,
                          strides.t_col, VEC, VECTOR)
        top_c, available = _top_classes(gt if FLAGS.RANK_BY_TEACHER else gs,
                                        gathered_p - shift3, gathered_ok, k, C, K_PAD)
    N: tl.constexpr = win_g.shape[1] * VEC
    gs = tl.reshape(gs, [ROWS, N])
    left = tl.reshape(available, [ROWS, N])
    extra_u = tl.where(left, gs, -float("inf"))
    if FLAGS.SPARSE:
        m_u, z_u = _merge_classes(m_u, z_u, extra_u, c2)
    else:
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
    top_s = tl.where(in_top, _load(tensors.student, s_row[:, None], top_p, in_top,
                                   strides.s_col), 0.0)
    if FLAGS.SPARSE:
        if FLAGS.HAS_TARGET:
            y_class = tl.load(tensors.target + rows_in)
        else:
            y_class = tl.full([ROWS], -1, tl.int64)
        # the student's logits over R: the streamed ones' sum (in w's place) and the gathered
        # groups' unselected classes
        sum_rest = w + tl.sum(tl.where(left, gs, 0.0), axis=1)
        m_v, z_v, w, sum_unlisted, top_t, top_listed, t_y, y_listed = _sparse_teacher_sums(
            tensors, strides, row, c2, m_u, sum_rest, tail, tl.where(in_top, top_c, C), y_class,
            K, KB)
        # the unlisted classes of R: C - K less the unlisted ones selected
        unlisted = (C - K) - tl.sum((in_top & ~top_listed).to(tl.int32), axis=1)
        m_v, z_v, w = _sparse_tail(m_v, z_v, w, m_u, c2, tail, unlisted, sum_unlisted)
        top_t = tl.where(in_top, top_t, 0.0)
    else:
        top_t = tl.where(in_top, _load(tensors.teacher, t_row[:, None], top_p, in_top,
                                       strides.t_col), 0.0)

    lz_u = _log2(z_u)
    lz_v = _log2(z_v)
    kl_rest = LN2 * (w / z_v - (lz_v - lz_u))
    # one remaining class: the point mass on both sides, KL exactly 0
    kl_rest = tl.where(C - k == 1, 0.0, kl_rest)
    if FLAGS.HAS_TARGET:
        m_s, z_s = _merge_classes(
            m_s, z_s, tl.where(tl.reshape(gathered_ok, [ROWS, N]), gs, -float("inf")), LOG2E)
        y = tl.load(tensors.target + rows_in)
        counted = (y != settings.ignore_index) & row_ok
        y_safe = tl.where(counted & (y >= 0) & (y < C), y, 0)
        y_p = y_safe + shift
        s_y = tl.load(tensors.student + s_row + y_p * strides.s_col).to(tl.float32)
        ce = tl.fma(LN2, m_s, -s_y) + LN2 * _log2(z_s)
    else:
        counted = row_ok
        y_p = shift
        ce = tl.zeros([ROWS], tl.float32)
    local, grad_top_s, grad_top_t = _local_term_rows(top_s, top_t, settings, K_PAD,
                                                     FLAGS.TEACHER_GRAD)
    T = settings.temperature
    rntk = T * T * kl_rest
    tl.store(tensors.loss + rows, tl.where(
        counted, settings.ce_weight * ce + settings.alpha * local + settings.beta * rntk, 0.0),
        mask=row_ok)
    tl.store(tensors.parts + rows * 3 + 0, tl.where(counted, ce, 0.0), mask=row_ok)
    tl.store(tensors.parts + rows * 3 + 1, tl.where(counted, local, 0.0), mask=row_ok)
    tl.store(tensors.parts + rows * 3 + 2, tl.where(counted, rntk, 0.0), mask=row_ok)

    # per row: q_c = 2^a_u / z_u, p_c = 2^a_v / z_v, and softmax(s)_c =
    # 2^(s_c log2 e - m_s) / z_s = (2^a_u)^T 2^(T m_u - m_s) / z_s
    scale = _grad_scale(tensors.grad_scale, FLAGS.SCALE_GRAD)
    rest_w = settings.beta * T * scale
    ce_w = settings.ce_weight * scale
    w_q = rest_w / z_u
    w_p = rest_w / z_v
    w_ce = tl.zeros([ROWS], tl.float32)
    if FLAGS.HAS_TARGET:
        if FLAGS.T_POW == 0:
            w_ce = ce_w / z_s
        else:
            w_ce = ce_w * tl.exp2(FLAGS.T_POW * m_u - m_s) / z_s  # whole numbers: exact
    else:
        m_s = tl.zeros([ROWS], tl.float32)
    if FLAGS.SPARSE:
        t_shift = w_p * tl.exp2(tl.fma(tail, c2, -m_v))  # beta T p of an unlisted class
    else:
        t_shift = LN2 * (lz_u - lz_v) - kl_rest
    keep = counted[:, None]
    g_top_s = tl.zeros([ROWS, K_PAD], tl.float32)
    y_rest = tl.zeros([ROWS], tl.int1)
    g_y = tl.zeros([ROWS], tl.float32)
    if FLAGS.STUDENT_GRAD:
        g_top_s = grad_top_s * scale
        if FLAGS.HAS_TARGET:
            g_top_s += (ce_w / z_s)[:, None] * tl.exp2(tl.fma(top_s, LOG2E, -m_s[:, None])) - \
                tl.where(top_c == y[:, None], ce_w, 0.0)
            # the target, when it is not among the selected classes (nor, against a sparse
            # teacher, listed: ``_store_listed`` writes it then)
            y_rest = counted & (tl.max((top_c == y[:, None]).to(tl.int32), axis=1) == 0)
            if FLAGS.SPARSE:
                y_rest = y_rest & ~y_listed
            else:
                t_y = tl.load(tensors.teacher + t_row + y_p * strides.t_col).to(tl.float32)
            g_y = w_q * tl.exp2(tl.fma(s_y, c2, -m_u)) - w_p * tl.exp2(tl.fma(t_y, c2, -m_v)) + \
                (ce_w / z_s) * tl.exp2(tl.fma(s_y, LOG2E, -m_s)) - ce_w
        g_top_s = tl.where(keep, g_top_s, 0.0)
    g_top_t = tl.where(keep, grad_top_t * scale, 0.0)
    return ((counted, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift),
            (tl.where(in_top, top_c, C), g_top_s, g_top_t, y_p, y_rest, g_y))


@triton.jit
def _write_gradients(tensors, strides, C, K, settings, row, span, per_row, own, first_here,
                     last_here, ROWS: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
                     K_PAD: tl.constexpr, FLAGS: tl.constexpr, ROW_ALIGN: tl.constexpr,
                     SHIFTED: tl.constexpr, VECTOR: tl.constexpr, S_PACKED: tl.constexpr,
                     T_PACKED: tl.constexpr, WHOLE: tl.constexpr, KB: tl.constexpr):
    """Step 3 over the chunks of ``span``: every class by the remaining-class formula, then
    (after a block barrier) the selected classes and the target that lie in the span their
    own values ``own`` (``_row_values``), and a sparse teacher's listed classes theirs."""
    _, row_ok, rows_in, shift, s_row, t_row = row
    if SHIFTED:
        gs_row = tl.multiple_of(rows_in * strides.gs_row - shift, VEC)
        gt_row = tl.multiple_of(rows_in * strides.gt_row - shift, VEC)
    else:  # (a "- 0" here would be folded away with the alignment it carries)
        gs_row = tl.multiple_of(rows_in * strides.gs_row, ROW_ALIGN)
        gt_row = tl.multiple_of(rows_in * strides.gt_row, ROW_ALIGN)
    counted, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift = per_row
    inputs = (tensors.grad_s, tensors.grad_t, gs_row[:, None, None], gt_row[:, None, None],
              tensors.student, tensors.teacher, s_row[:, None, None], t_row[:, None, None],
              shift[:, None, None], C, strides.s_col, strides.t_col, row_ok[:, None, None],
              LOG2E / settings.temperature,
              (counted[:, None, None], m_u[:, None, None], m_v[:, None, None],
               m_s[:, None, None], w_q[:, None, None], w_p[:, None, None], w_ce[:, None, None],
               t_shift[:, None, None]))
    _stream(_grad_step, (), inputs, span, LANES, VEC, 0, FLAGS, VECTOR, SHIFTED, S_PACKED,
            T_PACKED)
    if VECTOR:  # the partial groups at the rows' ends, skipped by the vector stores
        _grad_boundary(inputs, shift, first_here, last_here, VEC, FLAGS)

    # The selected classes and the target get their own values once every thread's sweep
    # (which wrote the remaining-class formula there too) has landed.
    tl.debug_barrier()
    top_c, g_top_s, g_top_t, y_p, y_rest, g_y = own
    top_p = top_c + shift[:, None]
    in_top = (top_c < C) & row_ok[:, None]
    if not WHOLE:  # the selected classes and the target in this split
        lo, hi, _, _, _ = span
        BLOCK: tl.constexpr = LANES * VEC
        in_top = in_top & (top_p >= lo * BLOCK) & (top_p < hi * BLOCK)
        y_rest = y_rest & (y_p >= lo * BLOCK) & (y_p < hi * BLOCK)
    if FLAGS.STUDENT_GRAD:
        if FLAGS.HAS_TARGET:
            tl.store(tensors.grad_s + gs_row + y_p, g_y.to(tensors.grad_s.dtype.element_ty),
                     mask=y_rest & row_ok)
        tl.store(tensors.grad_s + gs_row[:, None] + top_p,
                 g_top_s.to(tensors.grad_s.dtype.element_ty), mask=in_top)
    if FLAGS.TEACHER_GRAD:
        tl.store(tensors.grad_t + gt_row[:, None] + top_p,
                 g_top_t.to(tensors.grad_t.dtype.element_ty), mask=in_top)
    if FLAGS.SPARSE and FLAGS.STUDENT_GRAD:
        if WHOLE:
            _store_listed(tensors, strides, settings, row, gs_row, per_row, own, 0, C + VEC, K,
                          FLAGS, KB)
        else:
            _store_listed(tensors, strides, settings, row, gs_row, per_row, own,
                          lo * BLOCK, hi * BLOCK, K, FLAGS, KB)


# ---- Wide rows' records ----------------------------------------------------------------------


@triton.jit
def _workspace(work_ptr, wave_row, splits, ROWS: tl.constexpr, K_PAD: tl.constexpr):
    """A wide row's workspace in its wave's (``work_ptr``, row ``wave_row``): its splits'
    records, then its row record, [ROWS] pointers each."""
    records = work_ptr + tl.zeros([ROWS], tl.int64) + wave_row * \
        (splits * (STATS + K_PAD) + ROW_WORDS + 3 * K_PAD)
    return records, records + splits * (STATS + K_PAD)


@triton.jit
def _store_split_record(record, sums, win_g, K_PAD: tl.constexpr):
    """A split's record: its sums (``_row_sums``) and the ids of its k best groups."""
    m_u, z_u, m_v, z_v, w, m_s, z_s = sums
    tl.store(record + SPLIT_M_U, m_u)
    tl.store(record + SPLIT_Z_U, z_u)
    tl.store(record + SPLIT_M_V, m_v)
    tl.store(record + SPLIT_Z_V, z_v)
    tl.store(record + SPLIT_W, w)
    tl.store(record + SPLIT_M_S, m_s)
    tl.store(record + SPLIT_Z_S, z_s)
    tl.store((record + STATS)[:, None] + tl.arange(0, K_PAD)[None, :],
             win_g.to(tl.float32, bitcast=True))


@triton.jit
def _store_row_record(row_record, per_row, own, K_PAD: tl.constexpr):
    """What the gradient launch needs of a row (``_row_values``' ``per_row`` and ``own``)."""
    counted, m_u, m_v, m_s, w_q, w_p, w_ce, t_shift = per_row
    top_c, g_top_s, g_top_t, y_p, y_rest, g_y = own
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


@triton.jit
def _load_row_record(row_record, K_PAD: tl.constexpr):
    """``_store_row_record``'s (per_row, own)."""
    per_row = (tl.load(row_record + ROW_COUNTED) != 0.0, tl.load(row_record + ROW_M_U),
               tl.load(row_record + ROW_M_V), tl.load(row_record + ROW_M_S),
               tl.load(row_record + ROW_W_Q), tl.load(row_record + ROW_W_P),
               tl.load(row_record + ROW_W_CE), tl.load(row_record + ROW_T_SHIFT))
    cells = (row_record + ROW_WORDS)[:, None] + tl.arange(0, K_PAD)[None, :]
    own = (tl.load(cells).to(tl.int32, bitcast=True), tl.load(cells + K_PAD),
           tl.load(cells + 2 * K_PAD),
           tl.load(row_record + ROW_Y_POS).to(tl.int32, bitcast=True),
           tl.load(row_record + ROW_Y_REST) != 0.0, tl.load(row_record + ROW_G_Y))
    return per_row, own


@triton.jit
def _merge_splits(tensors, strides, C, K, settings, row, c2, records, row_record, splits,
                  ROWS: tl.constexpr, VEC: tl.constexpr, K_PAD: tl.constexpr,
                  FLAGS: tl.constexpr, VECTOR: tl.constexpr, S_PAD: tl.constexpr,
                  KB: tl.constexpr):
    """A wide row's values from its splits' records (``_row_values``), stored in its row
    record for the gradient launch. Loads go through L2 (``.cg``): the records come from
    programs on other SMs."""
    SPLIT_RECORD: tl.constexpr = STATS + K_PAD
    parts = records[:, None] + tl.arange(0, S_PAD)[None, :] * SPLIT_RECORD
    has = tl.arange(0, S_PAD)[None, :] < splits
    sums = _row_sums((
        tl.load(parts + SPLIT_M_U, mask=has, other=-1e30, cache_modifier=".cg"),
        tl.load(parts + SPLIT_M_V, mask=has, other=-1e30, cache_modifier=".cg"),
        tl.load(parts + SPLIT_M_S, mask=has, other=-1e30, cache_modifier=".cg"),
        tl.load(parts + SPLIT_Z_U, mask=has, other=0.0, cache_modifier=".cg"),
        tl.load(parts + SPLIT_Z_V, mask=has, other=0.0, cache_modifier=".cg"),
        tl.load(parts + SPLIT_W, mask=has, other=0.0, cache_modifier=".cg"),
        tl.load(parts + SPLIT_Z_S, mask=has, other=0.0, cache_modifier=".cg")), FLAGS.SPARSE)
    slot = tl.arange(0, S_PAD * K_PAD)[None, :]
    has = slot // K_PAD < splits
    cells = records[:, None] + (slot // K_PAD) * SPLIT_RECORD + STATS + slot % K_PAD
    win_g = tl.where(has, tl.load(cells, mask=has, other=0.0, cache_modifier=".cg")
                     .to(tl.int32, bitcast=True), NO_GROUP)
    per_row, own = _row_values(tensors, strides, C, K, settings, row, c2, sums, win_g, ROWS,
                               VEC, K_PAD, FLAGS, VECTOR, KB)
    _store_row_record(row_record, per_row, own, K_PAD)


# ---- The kernels -----------------------------------------------------------------------------


@triton.jit
def _ldrld_rows_kernel(
    tensors, strides, n_rows, C, settings,  # Tensors, Strides, sizes, config.LossNumbers
    K,  # a sparse teacher's listed classes per row
    FLAGS: tl.constexpr,  # Flags
    # layout (policy.FusedLaunch) and memory access (the launcher's alignment checks)
    ROWS: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, KPL: tl.constexpr,
    K_PAD: tl.constexpr, ROW_ALIGN: tl.constexpr, SHIFTED: tl.constexpr, VECTOR: tl.constexpr,
    S_PACKED: tl.constexpr, T_PACKED: tl.constexpr,
    KB: tl.constexpr,  # a sparse teacher's listed classes, KB at a time
):
    """Whole rows, ROWS per program: steps 1 to 3, the row losses and their gradients."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row = _rows(rows, n_rows, strides, ROWS, VEC, ROW_ALIGN, SHIFTED)
    span = _whole_span(C, LANES * VEC, VEC, SHIFTED)
    win_g, c2, sums = _select_and_sum(tensors, strides, C, settings, row, span, ROWS, LANES,
                                      VEC, KPL, K_PAD, FLAGS, VECTOR, SHIFTED, S_PACKED,
                                      T_PACKED, True)
    per_row, own = _row_values(tensors, strides, C, K, settings, row, c2, sums, win_g, ROWS,
                               VEC, K_PAD, FLAGS, VECTOR, KB)
    if FLAGS.STUDENT_GRAD or FLAGS.TEACHER_GRAD:
        everywhere = tl.full([ROWS], 1, tl.int1)
        _write_gradients(tensors, strides, C, K, settings, row, span, per_row, own, everywhere,
                         everywhere, ROWS, LANES, VEC, K_PAD, FLAGS, ROW_ALIGN, SHIFTED,
                         VECTOR, S_PACKED, T_PACKED, True, KB)


@triton.jit
def _teacher_top(tensors, strides, rows_in, K_PAD: tl.constexpr):
    """A sparse teacher's top-k classes, ranked by the teacher (``tensors.top``)."""
    return tl.load(tensors.top + (rows_in * strides.top_row)[:, None]
                   + tl.arange(0, K_PAD)[None, :])


@triton.jit
def _teacher_top_groups(tensors, strides, rows_in, shift, C, VEC: tl.constexpr,
                        K_PAD: tl.constexpr):
    """The groups of a sparse teacher's top-k, each once (NO_GROUP for the rest)."""
    top_c = _teacher_top(tensors, strides, rows_in, K_PAD)
    groups = tl.where(top_c < C, (top_c + shift[:, None]) // VEC, NO_GROUP)
    ranks = tl.arange(0, K_PAD)
    earlier = (groups[:, :, None] == groups[:, None, :]) & (ranks[None, :] < ranks[:, None])[None]
    return tl.where(tl.max(earlier.to(tl.int32), axis=2) > 0, NO_GROUP, groups)


@triton.jit
def _select_and_sum(tensors, strides, C, settings, row, span, ROWS: tl.constexpr,
                    LANES: tl.constexpr, VEC: tl.constexpr, KPL: tl.constexpr,
                    K_PAD: tl.constexpr, FLAGS: tl.constexpr, VECTOR: tl.constexpr,
                    SHIFTED: tl.constexpr, S_PACKED: tl.constexpr, T_PACKED: tl.constexpr,
                    WHOLE: tl.constexpr):
    """Steps 1 and 2 over the chunks of ``span``: the k best groups by the ranking logits
    (``_select``), log2(e) / T, and the sums of the classes outside those groups
    (``_statistics``). A sparse teacher's top-k is known before the kernel runs: ranked by
    the teacher, the winning groups are its top-k's (``tensors.top``)."""
    _, row_ok, rows_in, shift, s_row, t_row = row
    by_teacher: tl.constexpr = FLAGS.RANK_BY_TEACHER
    if FLAGS.SPARSE:
        c2 = LOG2E / settings.temperature  # x c2 is x / T in base 2
        if by_teacher:
            win_g = _teacher_top_groups(tensors, strides, rows_in, shift, C, VEC, K_PAD)
            if not WHOLE:  # a split's own: each group in one split's record
                lo, hi, _, _, _ = span
                win_g = tl.where((win_g >= lo * LANES) & (win_g < hi * LANES), win_g,
                                 NO_GROUP)
            theta_v = tl.zeros([ROWS], tl.float32)
            theta_g = tl.zeros([ROWS], tl.int32)
            offsets = (tl.full([ROWS, LANES], -1e30, tl.float32),) * 2  # (moved as it goes)
        else:
            key = (tensors.student, s_row[:, None, None], shift[:, None, None], C,
                   strides.s_col)
            win_g, theta_v, theta_g, lane_max = _select(key, span, row_ok, settings.k, ROWS,
                                                        LANES, VEC, KPL, K_PAD, FLAGS, VECTOR,
                                                        SHIFTED, S_PACKED, WHOLE)
            # the offsets, fixed: no class outside the winners lies above its thread's best
            off_u = tl.maximum(tl.math.ceil(lane_max * c2), -1e30)
            if FLAGS.T_POW == 0:
                offsets = (off_u, tl.maximum(tl.math.ceil(lane_max * LOG2E), -1e30))
            else:  # (2^(T a_u): s log2(e) less T off_u)
                offsets = (off_u, off_u * FLAGS.T_POW)
        inputs = (tensors.student, s_row[:, None, None], shift[:, None, None], C,
                  strides.s_col, c2, theta_v[:, None],
                  tl.where(theta_g == NO_GROUP, -1, theta_g)[:, None], win_g, offsets[0],
                  offsets[1])
    else:
        key = (tensors.teacher if by_teacher else tensors.student,
               (t_row if by_teacher else s_row)[:, None, None], shift[:, None, None], C,
               strides.t_col if by_teacher else strides.s_col)
        win_g, theta_v, theta_g, _ = _select(key, span, row_ok, settings.k, ROWS, LANES, VEC,
                                             KPL, K_PAD, FLAGS, VECTOR, SHIFTED,
                                             T_PACKED if by_teacher else S_PACKED, WHOLE)
        c2 = LOG2E / settings.temperature
        # fewer than k groups with a finite key leave the threshold at (-inf, NO_GROUP):
        # the groups of key -inf are then not winners (none is in win_g), so none may rank
        # at it
        inputs = (tensors.student, tensors.teacher, s_row[:, None, None], t_row[:, None, None],
                  shift[:, None, None], C, strides.s_col, strides.t_col, c2, theta_v[:, None],
                  tl.where(theta_g == NO_GROUP, -1, theta_g)[:, None])
    return win_g, c2, _statistics(inputs, span, ROWS, LANES, VEC, KPL, FLAGS, VECTOR, SHIFTED,
                                  S_PACKED, T_PACKED)


@triton.jit(do_not_specialize=["row0"])  # one variant for every wave
def _ldrld_split_stats_kernel(
    tensors, strides, n_rows, C, settings, K,  # as _ldrld_rows_kernel's
    # the wave's first row, splits per row, chunks per split, and the wave's workspace
    row0, splits, split_chunks, work_ptr,
    FLAGS: tl.constexpr,
    ROWS: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, KPL: tl.constexpr,
    K_PAD: tl.constexpr, ROW_ALIGN: tl.constexpr, SHIFTED: tl.constexpr, VECTOR: tl.constexpr,
    S_PACKED: tl.constexpr, T_PACKED: tl.constexpr, KB: tl.constexpr,
    S_PAD: tl.constexpr,  # splits, to a power of two
    MERGE: tl.constexpr,  # the last split of a row to finish merges the row's records
):
    """Split program_id(1) of wave row program_id(0) (ROWS is 1): steps 1 and 2 over its
    chunks, its record; with MERGE, the row's loss and its row record from every split's."""
    rows = row0 + tl.program_id(0).to(tl.int64) + tl.arange(0, ROWS)
    records, row_record = _workspace(work_ptr, tl.program_id(0).to(tl.int64), splits, ROWS,
                                     K_PAD)
    row = _rows(rows, n_rows, strides, ROWS, VEC, ROW_ALIGN, SHIFTED)
    split = tl.program_id(1)
    span = _split_span(split, split_chunks, C, LANES * VEC, VEC, SHIFTED)
    win_g, c2, sums = _select_and_sum(tensors, strides, C, settings, row, span, ROWS, LANES,
                                      VEC, KPL, K_PAD, FLAGS, VECTOR, SHIFTED, S_PACKED,
                                      T_PACKED, False)
    _store_split_record(records + split * (STATS + K_PAD), sums, win_g, K_PAD)
    if MERGE:
        # every thread's stores are issued, then one release-acquire ticket per program
        tl.debug_barrier()
        ticket_ptr = (row_record + TICKET).to(tl.pointer_type(tl.int32))
        ticket = tl.max(tl.atomic_add(ticket_ptr, 1, sem="acq_rel"), axis=0)
        if ticket == splits - 1:  # runs: 1 / splits
            _merge_splits(tensors, strides, C, K, settings, row, c2, records, row_record,
                          splits, ROWS, VEC, K_PAD, FLAGS, VECTOR, S_PAD, KB)
            tl.store(ticket_ptr, 0)  # ready for the next wave


@triton.jit(do_not_specialize=["row0"])  # one variant for every wave
def _ldrld_split_grads_kernel(
    tensors, strides, n_rows, C, settings, K,  # as _ldrld_split_stats_kernel's
    row0, splits, split_chunks, work_ptr,
    FLAGS: tl.constexpr,
    ROWS: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, K_PAD: tl.constexpr,
    ROW_ALIGN: tl.constexpr, SHIFTED: tl.constexpr, VECTOR: tl.constexpr,
    S_PACKED: tl.constexpr, T_PACKED: tl.constexpr, KB: tl.constexpr,
):
    """Split program_id(1) of wave row program_id(0): step 3 over its chunks, from the row
    record (written by the merge, or by the caller: ``sharded``)."""
    rows = row0 + tl.program_id(0).to(tl.int64) + tl.arange(0, ROWS)
    _, row_record = _workspace(work_ptr, tl.program_id(0).to(tl.int64), splits, ROWS, K_PAD)
    row = _rows(rows, n_rows, strides, ROWS, VEC, ROW_ALIGN, SHIFTED)
    lo, hi, full_lo, full_hi, tail_lo = _split_span(tl.program_id(1), split_chunks, C,
                                                    LANES * VEC, VEC, SHIFTED)
    # whether the split holds the chunk of the row's first position, and of its last one (a
    # shifted row may end a chunk before `end`); per row: the interpreter mistypes a scalar
    # bool broadcast into a tensor
    first_here = tl.zeros([ROWS], tl.int32) + lo == 0
    last_chunk = (C + row[3] - 1) // (LANES * VEC)  # (row[3]: the shift)
    last_here = (last_chunk >= lo) & (last_chunk < hi)
    per_row, own = _load_row_record(row_record, K_PAD)
    _write_gradients(tensors, strides, C, K, settings, row,
                     (lo, hi, full_lo, full_hi, tail_lo), per_row, own, first_here, last_here,
                     ROWS, LANES, VEC, K_PAD, FLAGS, ROW_ALIGN, SHIFTED, VECTOR, S_PACKED,
                     T_PACKED, False, KB)
