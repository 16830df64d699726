"""The backends, in one table: what computes the rows of each (whole rows, or a rank's slice
of the classes with a ``process_group``), and whether it can run here, with the reason when
it cannot. ``api``, ``fused_linear``, the ``ldrld`` command, the bench and the tests all read
it.

Every backend's rows function has the contract of ``vectorized.ldrld_rows``: (student,
teacher, target, config, need_student_grad, need_teacher_grad, grad_scale) -> (row losses,
parts, student gradient, teacher gradient), the gradients computed in the forward pass.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ldrld_kernels.pytorch import sparse_rows, vectorized
from ldrld_kernels.sparse import SparseTeacher


def _triton_rows(student, teacher, target, config, need_student_grad, need_teacher_grad,
                 grad_scale=None):
    """``kernels.launcher.ldrld_rows`` through the custom op ``ops.ldrld_rows``, so that
    ``torch.compile`` sees one opaque node (with its fake) for every caller: ``ldrld_loss``
    and the fused-linear loss alike."""
    from ldrld_kernels.kernels import ops

    row_loss, parts, grad_s, grad_t = ops.ldrld_rows(
        student, teacher, target, grad_scale, *config.values(), need_student_grad,
        need_teacher_grad)
    return (row_loss, parts, grad_s if need_student_grad else None,
            grad_t if need_teacher_grad else None)


def _triton_sharded_rows(student, teacher, target, config, need_student_grad, need_teacher_grad,
                         grad_scale, *, shard):
    from ldrld_kernels.kernels import sharded

    return sharded.ldrld_rows(student, teacher, target, config, need_student_grad,
                              need_teacher_grad, grad_scale, shard)


def _triton_sparse_rows(student, teacher, target, config, need_student_grad, need_teacher_grad,
                        grad_scale=None):
    """``kernels.launcher.ldrld_sparse_rows`` through the custom op
    ``ops.ldrld_sparse_rows``: the teacher's gradient is None (it is data)."""
    from ldrld_kernels.kernels import ops

    row_loss, parts, grad_s = ops.ldrld_sparse_rows(
        student, teacher.ids, teacher.logprobs, target, grad_scale, *config.values(),
        need_student_grad)
    return row_loss, parts, grad_s if need_student_grad else None, None


def _triton_sparse_sharded_rows(student, teacher, target, config, need_student_grad,
                                need_teacher_grad, grad_scale, *, shard):
    from ldrld_kernels.kernels import sharded

    return sharded.ldrld_sparse_rows(student, teacher, target, config, need_student_grad,
                                     grad_scale, shard)


def _always(device: torch.device, dtypes: tuple[torch.dtype, ...]) -> Exception | None:
    return None


def _triton_unavailable(device: torch.device,
                        dtypes: tuple[torch.dtype, ...]) -> Exception | None:
    if torch.float64 in dtypes:
        return TypeError("ldrld_loss: backend='triton' takes float32, float16 or bfloat16 "
                         "logits, got dtype=torch.float64 (use backend='torch')")
    from ldrld_kernels import kernels

    try:
        kernels.import_triton()
    except ImportError:
        return ValueError("ldrld_loss: backend='triton' needs the triton package, which is "
                          "not installed")
    if device.type == "cuda" and torch.version.hip is not None:
        # (a ROCm build names its GPUs "cuda" too)
        return ValueError("ldrld_loss: backend='triton' runs on NVIDIA GPUs only, and this "
                          f"PyTorch is a ROCm build (HIP {torch.version.hip}): the kernels "
                          "call CUDA's libdevice.fast_log2f and pass maxnreg, which AMD's "
                          "Triton backend lacks (backend='torch' runs here, and 'auto' takes "
                          "it)")
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not (device.type == "cpu" and interpreting):
        return ValueError(f"ldrld_loss: backend='triton' needs CUDA tensors (got device="
                          f"{device}); on CPU it runs only under TRITON_INTERPRET=1")
    if device.type == "cpu" and importlib.util.find_spec("numpy") is None:
        return ValueError("ldrld_loss: backend='triton' on CPU runs in the Triton "
                          "interpreter, which needs numpy (not installed; the test extra "
                          "installs it)")
    return None


@dataclass(frozen=True)
class Backend:
    rows: Callable  # whole rows
    sharded_rows: Callable  # a rank's slice of the classes; takes shard=
    sparse_rows: Callable  # the same two with a sparse teacher (a SparseTeacher of 2-D tensors)
    sparse_sharded_rows: Callable
    # the error a call would get on these logits (device, dtypes), or None when it runs
    unavailable: Callable[[torch.device, tuple[torch.dtype, ...]], Exception | None]


BACKENDS: dict[str, Backend] = {
    "torch": Backend(vectorized.ldrld_rows, vectorized.ldrld_rows, sparse_rows.ldrld_sparse_rows,
                     sparse_rows.ldrld_sparse_rows, _always),
    "triton": Backend(_triton_rows, _triton_sharded_rows, _triton_sparse_rows,
                      _triton_sparse_sharded_rows, _triton_unavailable),
}


def rows_function(name: str, shard=None, sparse: bool = False) -> Callable:
    """The rows function of backend ``name``, on a rank's slice with a ``shard``, with a
    sparse teacher when ``sparse``."""
    backend = BACKENDS[name]
    if shard is None:
        return backend.sparse_rows if sparse else backend.rows
    return functools.partial(backend.sparse_sharded_rows if sparse else backend.sharded_rows,
                             shard=shard)


def teacher_dtype(teacher: torch.Tensor | SparseTeacher) -> torch.dtype:
    """The dtype of the teacher's values: its logits, or a sparse teacher's log-probabilities."""
    return teacher.logprobs.dtype if isinstance(teacher, SparseTeacher) else teacher.dtype


def available(device: torch.device) -> list[str]:
    """The backends that run float32 logits on ``device`` on this machine."""
    return [name for name, backend in BACKENDS.items()
            if backend.unavailable(device, (torch.float32,)) is None]


def resolve_backend(backend: str, student: torch.Tensor,
                    teacher: torch.Tensor | SparseTeacher) -> str:
    """The backend that runs: ``"auto"`` picks Triton for CUDA tensors where it runs (not on
    a ROCm build, nor for float64), else PyTorch; a named one that cannot run these logits
    here raises its reason."""
    device, dtypes = student.device, (student.dtype, teacher_dtype(teacher))
    if backend == "auto":
        usable = device.type == "cuda" and BACKENDS["triton"].unavailable(device, dtypes) is None
        return "triton" if usable else "torch"
    error = BACKENDS[backend].unavailable(device, dtypes)
    if error is not None:
        raise error
    return backend
