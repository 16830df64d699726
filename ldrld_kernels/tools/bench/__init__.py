"""``ldrld bench``: forward + backward of every backend over a sweep of shapes.

Each case times one training-step use of the loss: the student requires grad, the teacher
does not; forward, then ``torch.autograd.grad`` of the loss with respect to the student. The
loss's backends also run against the teacher's top-64 (a sparse teacher, as saved offline),
in the same run, with the time of the logits' step over theirs ("x logits"). The compulsory
bytes of a step are one read of the student and of the teacher logits (or of the sparse
teacher's ids and log-probabilities) and one write of the student gradient; GB/s and the
fraction of the device-to-device copy bandwidth (measured in the same run, counting bytes
read and written) are on those bytes.
Speedups are against the reference (released-code style, group by group) and against
``torch.compile`` of the vectorized PyTorch path, measured in the same run.

The package, by concern: ``cases`` (the shapes, backends and the step each case runs),
``measure`` (time, bandwidth, memory, the machine), ``sweep`` (the timed cases and their
ratios), ``report`` (the table and the files) and ``fused_linear`` (``--fused-linear``).
"""

from ldrld_kernels.tools.bench.cases import (
    BACKENDS,
    DTYPES,
    QUICK_SHAPES,
    SHAPES,
    SPARSE_LISTED,
    Shape,
    available_backends,
    compulsory_bytes,
    loss_function,
    make_inputs,
    peak_memory_bytes,
    skip_reason,
    sparse_teacher,
    training_step,
)
from ldrld_kernels.tools.bench.fused_linear import (
    FUSED_LINEAR_SHAPES,
    format_fused_linear,
    fused_linear_inputs,
    fused_linear_step,
    run_fused_linear,
)
from ldrld_kernels.tools.bench.measure import step_peak_memory_bytes, time_ms
from ldrld_kernels.tools.bench.report import format_markdown, format_table, write_outputs
from ldrld_kernels.tools.bench.sweep import Report, Result, run_bench

__all__ = ["BACKENDS", "DTYPES", "FUSED_LINEAR_SHAPES", "QUICK_SHAPES", "SHAPES",
           "SPARSE_LISTED", "Report", "Result", "Shape", "available_backends",
           "compulsory_bytes", "format_fused_linear", "format_markdown", "format_table",
           "fused_linear_inputs", "fused_linear_step", "loss_function", "make_inputs",
           "peak_memory_bytes", "run_bench", "run_fused_linear", "skip_reason",
           "sparse_teacher", "step_peak_memory_bytes", "time_ms", "training_step",
           "write_outputs"]
