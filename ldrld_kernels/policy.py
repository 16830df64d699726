"""Which Triton kernel serves which call, and how it is launched: the one policy that the
launchers and ``ldrld profile`` both read.

Rows of up to ``MAX_FUSED`` classes go to the fused kernel (``triton_fused``): one launch,
each row streamed by ``lanes`` threads in chunks of ``lanes x vec`` classes, ``rows`` rows per
program. Wider rows go to the chunked kernels (``triton_chunked``).

Why these numbers:
- ``vec``: the elements of one 16-byte (128-bit) access of the widest input, which is also
  the group of the kernel's two-level top-k selection.
- ``lanes``: the largest power of two that gives each thread at least
  ``ELEMENTS_PER_THREAD`` classes (bfloat16; half as many in float32, the same bytes), so
  between 256 and 511. The per-row work (selection rounds, per-row reductions, the k x k
  pair tile) is then a few instructions per element (``ldrld profile``, Triton 3.9: 42-47
  per element in bfloat16 from 4,096 to 65,536 classes; at 4,096, 8 threads per row give
  44.3, 16 give 46.0, 32 give 51.9).
- HBM traffic model: the kernel reads a row three times (the ranking logits, then both
  tensors twice) and needs the second and third reads to come from L2. On average about 60%
  of a row's bytes are waiting for a re-read while it streams, so an SM holds about
  (resident threads) x (classes per thread) x 2.4 bytes (bfloat16) for later: 512 threads x
  256 to 511 classes is 315 to 630 KB, 41 to 83 MB over 132 SMs, against 50 MB of L2 on an
  H100 (60 on an H200). The top of that range (32,000 classes: 500 per thread) will read
  part of the second and third passes from HBM; fewer classes per thread would cost per-row
  instructions instead (48.3 per element at 32,000 with 250, against 42.4).
  ``benchmarks/gpu_check.sh`` measures the DRAM bytes with ncu.
- ``rows``: the rest of the program's threads take further rows; a row spans at most
  ``MAX_WARPS`` warps.
- ``candidates``: per thread, the best groups it keeps while streaming (``KPL`` in the
  kernel); more when fewer threads share a row, so that the exact fallback stays rare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# One program streams any row up to this width; past it the chunked kernels split a row over
# several programs so that a few rows still fill the GPU.
MAX_FUSED = 65536
# The fewest classes per thread (bfloat16; float32 takes half as many, the same bytes).
ELEMENTS_PER_THREAD = 256
MAX_WARPS = 16
MIN_LANES = 8
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
    def max_registers(self) -> int:
        """Registers per thread that still let 16 warps (512 threads) reside on an SM: ptxas
        caps a 16-warp program lower on its own, and spills."""
        return 65536 // max(16, self.num_warps) // THREADS_PER_WARP


def fused_launch(num_classes: int, student_itemsize: int, teacher_itemsize: int,
                 lanes: int | None = None) -> FusedLaunch:
    """The fused kernel's configuration for rows of ``num_classes``; ``lanes`` overrides the
    threads per row (tests use it to reach every layout at small sizes)."""
    vec = 16 // max(student_itemsize, teacher_itemsize)
    per_thread = ELEMENTS_PER_THREAD * 2 // max(student_itemsize, teacher_itemsize)
    if lanes is None:
        # the largest power of two that gives each thread at least per_thread classes
        lanes = 1 << max(0, math.floor(math.log2(max(num_classes / per_thread, 1.0))))
        lanes = min(max(lanes, MIN_LANES), MAX_WARPS * THREADS_PER_WARP)
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
