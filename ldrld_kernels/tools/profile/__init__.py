"""``ldrld profile``: the machine code an H100/H200 would run, read without a GPU.

Triton compiles for sm_90 on any machine, and its wheel carries ``nvdisasm`` and
``cuobjdump``. This module runs the project's real launchers on CPU tensors with a stand-in
driver that reports an sm_90 device: each launch goes through Triton's own argument
specialization (16-byte-aligned pointers, integers divisible by 16 or equal to 1), compiles,
and is recorded instead of run. The SASS of each compiled kernel is then counted.

The model. An H100/H200 SM issues at most 4 warp-instructions, 128 thread-instructions, per
cycle; both have 132 SMs at ~1.98 GHz. Measured device-to-device copy bandwidth: ~4.3 TB/s on
an H200 (datasheet 4.8), ~3.0 TB/s on an H100 SXM (datasheet 3.35). A training step must move,
per logit element, one read of the student and of the teacher and one write of each gradient
asked for: 6 bytes in bfloat16 with a student gradient, 12 in float32. At the copy bandwidth
that leaves 128 x 132 x 1.98e9 x bytes / bandwidth thread-instructions per element: about 46
in bfloat16 and 93 in float32 on an H200 (67 and 134 on an H100), with every issue slot
used. The issue-bound ceiling of a call is (budget / its instructions per element) x copy
bandwidth, capped at 100%.

Counting. Executed SASS instructions per thread = straight-line code once, plus each loop
body times its trip count for the profiled shape. Every loop in a kernel carries its trip
count as a comment on its ``for`` line, ``# trips: EXPR``, evaluated over the launch's
arguments (by name), ``num_programs(axis)``, ``cdiv`` and the kernels' trip model,
``kernels.trips.profile_hints(kernel_name, arguments, rows_model)`` (simulated means where
the count depends on the data, e.g. how often a fallback runs: on random normal logits, or
on the structured rows of ``--rows-model``); a conditional block may carry ``# runs: EXPR``, the
probability that it runs. SASS loops are found from their backward branches and matched to
the ``for`` line through the line information of the branch; an untagged loop is an error,
never a silent guess. The tags are read from the kernel's source as imported now (the source
text of the JIT functions it reaches), never from the files the line information names: a
binary from Triton's cache names the path it was first compiled from, which may since have
moved, gone or changed (the cache is keyed by the functions' source and first lines, not
their paths). Other conditional code is counted as always executed (an upper bound).
Instructions per logit element = executed per thread x threads x programs / (rows x C),
summed over the launches of the call.

What this is not: no cache or DRAM behaviour, no latency, no stalls, no dual issue or
tensor cores. It bounds speed from above (a kernel cannot issue faster than this); it never
measures speed. ``benchmarks/gpu_check.sh`` calibrates it with ``ncu`` when a GPU is lent.

The package, by concern: ``driver`` (the compile-only stand-in for the CUDA driver and the
calls it compiles), ``sass`` (reading the SASS: instructions, line information, loops and
their tags, executed counts), ``model`` (the Hopper issue model and the per-element
profiles), ``budgets`` (the one table ``--check`` holds the kernels to) and ``report`` (the
tables and the command line).
"""

from ldrld_kernels.tools.profile.budgets import BUDGETS, Budget, check_budgets
from ldrld_kernels.tools.profile.driver import SM_TARGET, Launch, compile_call, compile_only
from ldrld_kernels.tools.profile.model import (
    COPY_BANDWIDTH,
    DTYPES,
    CallProfile,
    KernelProfile,
    instruction_budget,
    profile_call,
    profile_launch,
    resident_ctas,
)
from ldrld_kernels.tools.profile.report import (
    ROW_MODELS,
    add_arguments,
    fallback_rate,
    fallback_rows,
    format_markdown,
    format_table,
    run,
)
from ldrld_kernels.tools.profile.sass import KernelSource, disassemble, read_cubin

__all__ = ["BUDGETS", "COPY_BANDWIDTH", "DTYPES", "ROW_MODELS", "SM_TARGET", "Budget",
           "CallProfile", "KernelProfile", "KernelSource", "Launch", "add_arguments",
           "check_budgets", "compile_call", "compile_only", "disassemble", "fallback_rate",
           "fallback_rows", "format_markdown", "format_table", "instruction_budget",
           "profile_call", "profile_launch", "read_cubin", "resident_ctas", "run"]
