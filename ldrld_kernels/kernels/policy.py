"""Which Triton kernel serves which call, and how it is launched: the one policy that the
launchers and ``ldrld profile`` both read.

Rows of up to ``MAX_FUSED`` classes go to the fused kernel (``ldrld``) whole: one
launch, each row streamed by ``lanes`` threads in chunks of ``lanes x vec`` classes, ``rows``
rows per program. Wider rows are split over several programs each, in waves of rows that fit
in the L2 (``split_launch``; two launches per wave).

Why these numbers:
- ``vec``: the elements of one 16-byte (128-bit) access of the widest input, which is also
  the group of the kernel's two-level top-k selection.
- ``lanes``: the largest power of two that gives each thread at least
  ``ELEMENTS_PER_THREAD`` classes (bfloat16; half as many in float32, the same bytes), so
  between 256 and 511. The per-row work (selection rounds, per-row reductions, the k x k
  pair tile) is then a few instructions per element (``ldrld profile``, Triton 3.9: 42-47
  per element in bfloat16 from 4,096 to 65,536 classes; at 4,096, 8 threads per row give
  43.9, 16 give 45.7, 32 give 49.0).
- HBM traffic model: the kernel reads a row three times (the ranking logits, then both
  tensors twice) and needs the second and third reads to come from L2. On average about 60%
  of a row's bytes are waiting for a re-read while it streams, so an SM holds about
  (resident threads) x (classes per thread) x 2.4 bytes (bfloat16) for later: 512 threads x
  256 to 511 classes is 315 to 630 KB, 41 to 83 MB over 132 SMs, against 50 MB of L2 on an
  H100 (60 on an H200). The top of that range (32,000 classes: 500 per thread) will read
  part of the second and third passes from HBM; fewer classes per thread would cost per-row
  instructions instead (48.1 per element at 32,000 with 250, against 41.6).
  ``benchmarks/gpu_check.sh`` measures the DRAM bytes with ncu.
- ``rows``: the rest of the program's threads take further rows (a program narrower than a
  warp's 32 threads per row is one warp); a row spans at most ``MAX_WARPS`` warps.
- ``candidates``: per thread, the best groups it keeps while streaming (``KPL`` in the
  kernel); more when fewer threads share a row, so that the exact fallback stays rare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ldrld_kernels.kernels.hardware import Hardware

# The rows ``ldrld profile --rows-model`` simulates the exact-selection fallback's rate on
# (``trips.row_logits`` draws them):
# - normal: i.i.d. standard normal logits;
# - clustered: the best classes at low ids, as a BPE vocabulary numbered by frequency gives:
#   2 z - ln(1 + id) (z standard normal; Zipf's law, p ~ 1 / (1 + id), on top of the noise);
# - spaced: normal logits, and 8 added to one class of every chunk of LANES x VEC (the same
#   offset in each, at random per row), so that the row's best groups all fall on one thread.
ROW_MODELS = ("normal", "clustered", "spaced")

# One program streams any row up to this width; past it a row is split over several programs
# so that a few rows still fill the GPU.
MAX_FUSED = 65536
# Wide rows: a wave's logits take at most this share of the L2 (the rest holds the gradients
# written meanwhile and the workspace), each split streams at least MIN_SPLIT_CHUNKS chunks,
# and a wave has enough programs for RESIDENT_WARPS warps on every SM (the budgets' floor).
L2_SHARE = 0.5
MIN_SPLIT_CHUNKS = 4
MAX_SPLITS = 32  # the merge holds MAX_SPLITS x K_PAD candidate groups (x VEC logits) per row
RESIDENT_WARPS = 16
# The fewest classes per thread (bfloat16; float32 takes half as many, the same bytes).
ELEMENTS_PER_THREAD = 256
MAX_WARPS = 16
MIN_LANES = 8
THREADS_PER_WARP = 32
# Warps of a program whose rows are narrower than a warp: one, so that every per-row reduction
# stays inside a warp (shuffles, no shared memory or block barrier): 1,000 classes in bfloat16
# count 61.0 instructions per element with Triton 3.9 and 60.7 with 3.6, against 61.6 and 66.3
# with 4 warps. 16 resident warps per SM then take 16 programs, which the registers allow.
SMALL_ROW_WARPS = 1


@dataclass(frozen=True)
class FusedLaunch:
    """Launch configuration of the LDRLD kernels (``ldrld``)."""

    rows: int  # rows per program
    lanes: int  # threads per row
    vec: int  # classes per thread per chunk (one 16-byte access), the selection group
    candidates: int  # groups each thread keeps while it streams the selection pass
    num_warps: int
    # wide rows (``split_launch``): chunks of lanes x vec classes per split of a row (0: one
    # program streams whole rows), and rows per wave
    split_chunks: int = 0
    wave_rows: int = 0

    @property
    def max_registers(self) -> int:
        """Registers per thread that still let 16 warps (512 threads) reside on an SM: ptxas
        caps a 16-warp program lower on its own, and spills."""
        return 65536 // max(16, self.num_warps) // THREADS_PER_WARP


def fused_launch(num_classes: int, student_itemsize: int, teacher_itemsize: int,
                 lanes: int | None = None) -> FusedLaunch:
    """The fused kernel's configuration for rows of ``num_classes``; ``lanes`` overrides the
    threads per row (tests use it to reach every layout at small sizes). A sparse teacher
    (``teacher_itemsize`` 0) streams the student alone: twice the classes per thread, the
    same bytes waiting in L2 for the re-reads."""
    vec = 16 // max(student_itemsize, teacher_itemsize)
    per_thread = ELEMENTS_PER_THREAD * 2 // max(student_itemsize, teacher_itemsize)
    if not teacher_itemsize:
        per_thread *= 2
    if lanes is None:
        # the largest power of two that gives each thread at least per_thread classes
        lanes = 1 << max(0, math.floor(math.log2(max(num_classes / per_thread, 1.0))))
        lanes = min(max(lanes, MIN_LANES), MAX_WARPS * THREADS_PER_WARP)
    num_warps = max(SMALL_ROW_WARPS, lanes // THREADS_PER_WARP)
    rows = num_warps * THREADS_PER_WARP // lanes
    # the exact fallback runs when a thread holds more than `candidates` of the row's k best
    # groups: for k = 7 on random logits about 0.2% of rows with 256 threads per row and 2
    # candidates (the profile counts it; 3 would cost 0.6 instructions per element more at
    # 65,536 classes), 0.1% with 32 and 3, 0.03% with 16 and 4, 0.02% with 8 and 5
    candidates = (2 if lanes >= 256 else 3 if lanes >= THREADS_PER_WARP else 4 if lanes >= 16
                  else 5)
    return FusedLaunch(rows=rows, lanes=lanes, vec=vec, candidates=candidates,
                       num_warps=num_warps)


def split_launch(rows: int, num_classes: int, student_itemsize: int, teacher_itemsize: int,
                 hardware: Hardware, *, lanes: int | None = None, splits: int | None = None,
                 wave_rows: int | None = None) -> FusedLaunch:
    """The configuration for rows wider than ``MAX_FUSED``: the layout of the widest fused
    rows, one row per program, each row split into ranges of whole chunks; ``lanes``,
    ``splits`` (at most; whole chunks each) and ``wave_rows`` override the policy (tests)."""
    launch = fused_launch(min(num_classes, MAX_FUSED), student_itemsize, teacher_itemsize, lanes)
    num_warps = max(1, launch.lanes // THREADS_PER_WARP)
    row_bytes = num_classes * (student_itemsize + teacher_itemsize)
    if wave_rows is None:
        # (full waves, the last one partial: waves of even size would give every program
        # fewer classes and the per-program work more weight)
        wave_rows = max(1, int(hardware.l2_bytes * L2_SHARE) // row_bytes)
    wave_rows = max(1, min(wave_rows, rows))
    chunks = math.ceil((num_classes + launch.vec - 1) / (launch.lanes * launch.vec))
    if splits is None:
        programs = hardware.multiprocessors * max(1, RESIDENT_WARPS // num_warps)
        # (at most one program per resident slot: a wave of programs one more than the
        # slots takes two program times)
        splits = min(max(1, programs // wave_rows), chunks // MIN_SPLIT_CHUNKS, MAX_SPLITS)
    # (3 candidates: with 2 the split kernels compile to more instructions, 73.0 against 70.7
    # per element at 4,096 x 131,072 in float32)
    return replace(launch, rows=1, num_warps=num_warps, wave_rows=wave_rows, candidates=3,
                   split_chunks=math.ceil(chunks / max(1, min(splits, chunks))))


def launch_for(rows: int, num_classes: int, student_itemsize: int, teacher_itemsize: int,
               hardware: Hardware) -> FusedLaunch:
    """The policy: whole rows per program up to ``MAX_FUSED`` classes, split rows past it."""
    if num_classes <= MAX_FUSED:
        return fused_launch(num_classes, student_itemsize, teacher_itemsize)
    return split_launch(rows, num_classes, student_itemsize, teacher_itemsize, hardware)


def hbm_bytes_per_element(rows: int, num_classes: int, student_itemsize: int,
                          teacher_itemsize: int, teacher_grad: bool,
                          hardware: Hardware, ranks: int = 1) -> float:
    """The HBM traffic model, bytes per logit element of a training step. Compulsory: one read
    of each input and one write of each gradient. Both designs read a row three times (the
    ranking logits, then both inputs twice), so the ranking input and both inputs once more
    come from L2 when the bytes waiting for their re-read fit in it, and in the share
    1 - L2 / waiting from HBM when they do not. Waiting: for whole rows, about 60% of every
    resident program's rows (a row streams while its re-reads wait); for wide rows, the
    wave's logits, which ``split_launch`` keeps under ``L2_SHARE`` of the L2. Vocabulary
    parallel (one rank of ``ranks``, ``sharded``): the statistics phase re-reads the
    ranking input as whole rows do, and the gradient phase both inputs after the collectives,
    so from L2 only when all the rank's rows fit in it. A sparse teacher streams no teacher
    logits: ``teacher_itemsize`` 0."""
    compulsory = (student_itemsize + teacher_itemsize + student_itemsize
                  + (teacher_itemsize if teacher_grad else 0))
    rereads = 2 * student_itemsize + teacher_itemsize  # ranked by the student (the default)
    width = -(-num_classes // ranks)
    launch = launch_for(rows, width, student_itemsize, teacher_itemsize, hardware) \
        if ranks == 1 else split_launch(rows, width, student_itemsize, teacher_itemsize,
                                        hardware, wave_rows=rows)
    row_bytes = width * (student_itemsize + teacher_itemsize)

    def missed(waiting: float) -> float:
        return max(0.0, 1.0 - hardware.l2_bytes / max(waiting, 1.0))

    programs = hardware.multiprocessors * max(1, RESIDENT_WARPS // launch.num_warps)
    if ranks > 1:
        return (compulsory + student_itemsize * missed(0.6 * programs * row_bytes)
                + (student_itemsize + teacher_itemsize) * missed(rows * row_bytes))
    if launch.split_chunks:
        return compulsory + rereads * missed(launch.wave_rows * row_bytes)
    return compulsory + rereads * missed(0.6 * programs * launch.rows * row_bytes)


def chunk_bounds(classes: int, lanes: int, vec: int, shifted: bool) -> tuple[int, int, int]:
    """The kernel's (FIRST, last, end): chunks [FIRST, last) are full in every row."""
    block = lanes * vec
    first = 1 if shifted else 0
    return first, max(classes // block, first), -(-(classes + (vec - 1 if shifted else 0)) // block)
