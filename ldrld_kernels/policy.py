"""Which Triton kernel serves which call, and how it is launched: the one policy that the
launchers and ``ldrld profile`` both read.

Rows of up to ``MAX_FUSED`` classes go to the fused kernel (``triton_fused``): one launch,
each row streamed by ``lanes`` threads in chunks of ``lanes x vec`` classes, ``rows`` rows per
program. Wider rows go to the chunked kernels (``triton_chunked``).

Why these numbers:
- ``vec``: the elements of one 16-byte (128-bit) access of the widest input, which is also
  the group of the kernel's two-level top-k selection.
- ``lanes``: enough threads per row that each handles about ``ELEMENTS_PER_THREAD`` classes.
  The per-row work (selection rounds, reductions, the k x k pair tile) then costs a few
  instructions per element, and the row's bytes that a program re-reads from L2 while it
  streams three times stay bounded: 132 SMs x 16 resident warps x 32 threads x 128 classes x
  4 bytes (bfloat16 student and teacher) is 35 MB, under the 50 MB L2 of an H100.
- ``rows``: the rest of the program's threads take further rows; a row spans at most
  ``MAX_WARPS`` warps.
- ``candidates``: per thread, the best groups it keeps while streaming (``KPL`` in the
  kernel); more when fewer threads share a row, so that the exact fallback stays rare.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton

# One program streams any row up to this width; past it the chunked kernels split a row over
# several programs so that a few rows still fill the GPU.
MAX_FUSED = 65536
# Classes per thread that amortize the per-row work (bfloat16; float32 takes half as many,
# which keeps the bytes in flight the same).
ELEMENTS_PER_THREAD = 256
MAX_WARPS = 16
THREADS_PER_WARP = 32
# Warps of a program whose rows are narrower than a warp: 16 resident warps per SM then need
# 4 programs per SM, which the registers allow.
SMALL_ROW_WARPS = 4


@dataclass(frozen=True)
class FusedLaunch:
    """Launch configuration of ``triton_fused._ldrld_fused_kernel``."""

    rows: int  # rows per program
    lanes: int  # threads per row
    vec: int  # classes per thread per chunk (one 16-byte access), the selection group
    candidates: int  # groups each thread keeps while it streams the selection pass
    num_warps: int

    @property
    def block(self) -> int:
        """Classes of one row per chunk."""
        return self.lanes * self.vec


def fused_launch(num_classes: int, student_itemsize: int, teacher_itemsize: int,
                 lanes: int | None = None) -> FusedLaunch:
    """The fused kernel's configuration for rows of ``num_classes``; ``lanes`` overrides the
    threads per row (tests use it to reach every layout at small sizes)."""
    vec = 16 // max(student_itemsize, teacher_itemsize)
    per_thread = ELEMENTS_PER_THREAD * 2 // max(student_itemsize, teacher_itemsize)
    if lanes is None:
        lanes = triton.next_power_of_2(max(1, num_classes // per_thread))
        lanes = min(max(lanes, 8), MAX_WARPS * THREADS_PER_WARP)
    num_warps = max(SMALL_ROW_WARPS, lanes // THREADS_PER_WARP)
    rows = num_warps * THREADS_PER_WARP // lanes
    # the exact fallback runs when a thread holds more than `candidates` of the row's k best
    # groups: for k = 7 on random logits about 0.1% of rows with 32 threads per row and 3
    # candidates, 0.03% with 16 and 4, 0.02% with 8 and 5
    candidates = 3 if lanes >= THREADS_PER_WARP else 4 if lanes >= 16 else 5
    return FusedLaunch(rows=rows, lanes=lanes, vec=vec, candidates=candidates,
                       num_warps=num_warps)


def uses_fused(num_classes: int) -> bool:
    return num_classes <= MAX_FUSED
