"""The launcher of the LDRLD kernels (``ldrld``): the output buffers, the alignment checks
that choose the loads, the kernel arguments, and the launches (one for whole rows, two per
wave of wide rows) on the configuration ``policy`` chooses."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels.hardware import hardware_of, on_device
from ldrld_kernels.kernels.ldrld import (
    ROW_WORDS,
    STATS,
    Flags,
    Strides,
    Tensors,
    _ldrld_rows_kernel,
    _ldrld_split_grads_kernel,
    _ldrld_split_stats_kernel,
)
from ldrld_kernels.kernels.policy import FusedLaunch, chunk_bounds, launch_for
from ldrld_kernels.pytorch.sparse_rows import teacher_top_k
from ldrld_kernels.pytorch.vectorized import gradient_dtype
from ldrld_kernels.sparse import tail_logprob


def allocate_outputs(student: torch.Tensor, teacher: torch.Tensor, need_student_grad: bool,
                     need_teacher_grad: bool):
    """Row losses (float32), per-row parts (float32) and contiguous gradient buffers in
    ``gradient_dtype`` of the inputs' dtypes (None where not asked for)."""
    rows = student.shape[0]
    row_loss = student.new_empty(rows, dtype=torch.float32)
    parts = student.new_empty(rows, 3, dtype=torch.float32)
    grad_s, grad_t = (x.new_empty(x.shape, dtype=gradient_dtype(x.dtype)) if need else None
                      for x, need in ((student, need_student_grad),
                                      (teacher, need_teacher_grad)))
    return row_loss, parts, grad_s, grad_t


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


class SparseInputs(NamedTuple):
    """A sparse teacher as the kernels read it (``ldrld.Tensors``): each row's K listed ids
    (int32) with their log-probabilities (float32), its tail log-probability (float32) and,
    ranked by the teacher, its top-k classes in rank order (int32, C past k)."""

    ids: torch.Tensor  # (rows, K)
    logprobs: torch.Tensor  # (rows, K)
    tail: torch.Tensor  # (rows,)
    top: torch.Tensor | None  # (rows, K_PAD), ranked by the teacher


# A sparse teacher's listed classes are read KB (at most LISTED_BLOCK) at a time
LISTED_BLOCK = 64


def kernel_arguments(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None,
                     config: LossConfig, row_loss: torch.Tensor, parts: torch.Tensor,
                     grad_s: torch.Tensor | None, grad_t: torch.Tensor | None,
                     grad_scale: torch.Tensor | None, launch: FusedLaunch,
                     sparse: SparseInputs | None = None) -> dict:
    """The keyword arguments that ``_ldrld_rows_kernel`` takes for a call (and the launch
    options): the pointers, strides and settings grouped (``Tensors``, ``Strides``,
    ``config.LossNumbers``), what the call computes (``Flags``), the layout of ``launch`` and
    the memory access the tensors allow; with ``sparse``, ``teacher`` is the student (no
    teacher logits: the kernels read ``sparse`` instead)."""
    rows, num_classes = student.shape
    grads = [grad for grad in (grad_s, grad_t) if grad is not None]
    row_align, shifted, vector = _alignment([student, teacher, *grads], launch.vec)
    k_pad = triton.next_power_of_2(config.k)
    listed = 0 if sparse is None else sparse.ids.shape[1]
    return dict(  # noqa: C408 (the kernel's argument names)
        tensors=Tensors(row_loss, parts, row_loss if grad_s is None else grad_s,
                        row_loss if grad_t is None else grad_t, student, teacher,
                        row_loss if target is None else target,
                        row_loss if grad_scale is None else grad_scale,
                        *((row_loss,) * 4 if sparse is None else
                          (*sparse[:3], row_loss if sparse.top is None else sparse.top))),
        strides=Strides(student.stride(0), student.stride(1), teacher.stride(0),
                        teacher.stride(1), num_classes if grad_s is None else grad_s.stride(0),
                        num_classes if grad_t is None else grad_t.stride(0), listed, k_pad),
        n_rows=rows, C=num_classes, settings=config.numbers(), K=listed,
        FLAGS=Flags(HAS_TARGET=target is not None, RANK_BY_TEACHER=config.rank_by == "teacher",
                    STUDENT_GRAD=grad_s is not None, TEACHER_GRAD=grad_t is not None,
                    SCALE_GRAD=grad_scale is not None,
                    T_POW=integer_temperature(config.temperature), SPARSE=sparse is not None),
        ROWS=launch.rows, LANES=launch.lanes, VEC=launch.vec, KPL=launch.candidates,
        K_PAD=k_pad, ROW_ALIGN=row_align, SHIFTED=shifted,
        VECTOR=vector, S_PACKED=_packed(student, launch.vec, shifted),
        T_PACKED=_packed(teacher, launch.vec, shifted),
        KB=min(LISTED_BLOCK, triton.next_power_of_2(max(listed, 1))),
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
    """Same contract as ``vectorized.ldrld_rows``: row losses (float32), per-row parts and
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
        _launch(arguments, launch, grad_s is not None or grad_t is not None)
        return row_loss, parts, grad_s, grad_t


def ldrld_sparse_rows(
    student: torch.Tensor,
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    target: torch.Tensor | None,
    config: LossConfig,
    need_student_grad: bool,
    grad_scale: torch.Tensor | None = None,
    *,
    launch: FusedLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``ldrld_rows`` against a sparse teacher, its top-K ``ids`` and ``logprobs`` (rows, K)
    (``sparse``): the row losses, parts and the student's gradient; the teacher has none."""
    with on_device(student.device):
        rows, num_classes = student.shape
        row_loss, parts, grad_s, _ = allocate_outputs(student, student, need_student_grad,
                                                      False)
        if rows == 0:
            return row_loss, parts, grad_s
        # (no teacher logits stream: 0 bytes of them a class)
        launch = launch or launch_for(rows, num_classes, student.element_size(), 0,
                                      hardware_of(student.device))
        arguments = kernel_arguments(student, student, target, config, row_loss, parts, grad_s,
                                     None, grad_scale, launch,
                                     sparse_inputs(ids, logprobs, num_classes, config))
        _launch(arguments, launch, grad_s is not None)
        return row_loss, parts, grad_s


def sparse_inputs(ids: torch.Tensor, logprobs: torch.Tensor, num_classes: int,
                  config: LossConfig) -> SparseInputs:
    """The kernels' form of a sparse teacher: its ids, their log-probabilities, its tail
    (``sparse.tail_logprob``, summed in float64) and, ranked by the teacher, its top-k
    (``sparse_rows.teacher_top_k`` on the kernels' float32 values)."""
    ids32 = ids.to(torch.int32).contiguous()
    values = logprobs.to(torch.float32).contiguous()
    tail = tail_logprob(logprobs, num_classes).to(torch.float32)
    top = None
    if config.rank_by == "teacher":
        k_pad = triton.next_power_of_2(config.k)
        top = torch.full((ids.shape[0], k_pad), num_classes, dtype=torch.int32,
                         device=ids.device)
        top[:, :config.k] = teacher_top_k(ids, values, tail, config.k, num_classes)
    return SparseInputs(ids32, values, tail, top)


def _launch(arguments: dict, launch: FusedLaunch, gradients: bool) -> None:
    """One launch of whole rows, or per wave of wide rows statistics then (when a gradient is
    asked for) gradients; a wave's logits stay in L2 between the two launches."""
    tensors = arguments["tensors"]
    rows, num_classes = tensors.student.shape
    if not launch.split_chunks:
        _ldrld_rows_kernel[(triton.cdiv(rows, launch.rows),)](**arguments)
        return
    arguments = split_arguments(arguments, launch, num_classes, tensors.student.device)
    for row0 in range(0, rows, launch.wave_rows):
        grid = (min(launch.wave_rows, rows - row0), arguments["splits"])
        _ldrld_split_stats_kernel[grid](row0=row0, MERGE=True, **arguments)
        if gradients:
            _ldrld_split_grads_kernel[grid](row0=row0, **gradient_arguments(arguments))


def split_arguments(arguments: dict, launch: FusedLaunch, num_classes: int,
                    device: torch.device) -> dict:
    """``arguments`` with the wide rows' own (but ``row0`` and ``MERGE``), as
    ``_ldrld_split_stats_kernel`` takes them: rows of ``num_classes`` in splits of
    ``launch.split_chunks`` chunks, and the workspace of a wave of ``launch.wave_rows`` rows
    (the records described above ``ldrld.STATS``)."""
    chunks = chunk_bounds(num_classes, launch.lanes, launch.vec, arguments["SHIFTED"])[2]
    splits = triton.cdiv(chunks, launch.split_chunks)
    k_pad = arguments["K_PAD"]
    # (zeros: the tickets start at 0, and the program that merges a row resets its ticket)
    work = torch.zeros(launch.wave_rows, splits * (STATS + k_pad) + ROW_WORDS + 3 * k_pad,
                       dtype=torch.float32, device=device)
    return {**arguments, "splits": splits, "split_chunks": launch.split_chunks,
            "work_ptr": work, "S_PAD": triton.next_power_of_2(splits)}


def gradient_arguments(arguments: dict) -> dict:
    """``split_arguments``' as ``_ldrld_split_grads_kernel`` takes them (it selects nothing)."""
    return {name: value for name, value in arguments.items()
            if name not in ("KPL", "S_PAD")}
