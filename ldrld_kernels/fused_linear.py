"""Fused-linear LDRLD: the loss of two output layers' logits without materializing them.

Language-model distillation has rows = tokens and C = the vocabulary: the student's and the
teacher's logits of a batch are gigabytes each. ``ldrld_fused_linear_loss`` takes the hidden
states and the output layers instead and computes, one chunk of rows at a time,
    z = h W^T + b                 (the student's and the teacher's, rows [0, V) of W and b)
    logits = softcap(scale z),    softcap(x) = cap tanh(x / cap)   (``Transform``; none
                                  when scale = 1 and cap = None: logits = z)
    the row losses and d loss / d logits   (the row kernels: Triton on CUDA, else PyTorch)
    d/dz = d/dlogits * scale (1 - tanh(scale z / cap)^2)   (d/dlogits * scale without a cap)
    d/dh = (d/dz) W,   d/dW += (d/dz)^T h,   d/db += sum over rows of d/dz,
then frees the chunk's logits. The transform and its slope are computed in float32 (float64
for float64 layers), and the row kernels take those logits. V (``num_classes``) is the
layers' row count, or fewer where a layer pads the vocabulary: its padded rows get a zero
gradient. The row kernels compute the gradients of the logits in the forward pass already,
so the gradients of every input are known when the forward pass ends; the backward pass
multiplies them by the upstream gradient (for ``reduction="none"`` that gradient is a vector
only known then: the backward pass runs the chunks again with it).

Memory: O(chunk_rows x C) for a chunk's logits and their gradients, plus the gradients of
the inputs (d/dW accumulated in float32), independent of the row count. The mean's row count
is the whole batch's (rows whose target is ``ignore_index`` do not count, in whichever chunk
they are).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ldrld_kernels.api import LDRLDOutput, _reduce, _scale, output, prepare
from ldrld_kernels.backends import rows_function
from ldrld_kernels.config import Backend, CallOptions, LossConfig, RankBy, Reduction
from ldrld_kernels.pytorch import parallel
from ldrld_kernels.sparse import SparseTeacher
from ldrld_kernels.validation import check_int, check_real

# ``chunk_rows="auto"``: one chunk's logits and their gradients take at most this many bytes
CHUNK_BYTES = {"cuda": 1 << 30, "cpu": 256 << 20}
CHUNK_TILE = 128  # rows: auto chunks are a multiple of it (a matmul tile) when they can be
HIDDEN_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def auto_chunk_rows(rows: int, num_classes: int, itemsize: int, teacher_grad: bool,
                    device: torch.device, sparse: bool = False) -> int:
    """Rows per chunk: the most whose student and teacher logits and their gradients fit in
    ``CHUNK_BYTES`` of the device type, a multiple of ``CHUNK_TILE`` when at least one
    (``sparse``: a sparse teacher, no teacher logits)."""
    per_row = max(1, num_classes) * itemsize * (2 if sparse else 4 if teacher_grad else 3)
    budget = CHUNK_BYTES.get(device.type, CHUNK_BYTES["cuda"])
    chunk = max(1, budget // per_row)
    if chunk >= CHUNK_TILE:
        chunk -= chunk % CHUNK_TILE
    return max(1, min(chunk, rows))


class Transform(NamedTuple):
    """What an output layer does to its logits z: ``softcap(scale * z)``, ``softcap(x) =
    cap * tanh(x / cap)`` (no cap: the identity). Cohere's ``logit_scale``, Granite's
    1 / ``logits_scaling``, Gemma-2's ``final_logit_softcapping``."""

    scale: float
    cap: float | None

    @classmethod
    def of(cls, who: str, scale: float, cap: float | None) -> Transform | None:
        """The transform of ``{who}_logit_scale`` and ``{who}_softcap``, checked; None for the
        identity (scale 1, no cap), which runs the layer exactly as without them."""
        check_real(f"{who}_logit_scale", scale, positive=True,
                   function="ldrld_fused_linear_loss")
        if cap is not None:
            check_real(f"{who}_softcap", cap, positive=True, function="ldrld_fused_linear_loss")
        if scale == 1.0 and cap is None:
            return None
        return cls(float(scale), None if cap is None else float(cap))

    def apply(self, z: torch.Tensor, slope: bool) -> tuple[torch.Tensor, Any]:
        """The logits of a chunk's ``z`` in float32 at least, and with ``slope`` d logits / d z
        (the scale, a float, without a cap; else a tensor like the logits), or None. ``z`` is
        the caller's to overwrite (one chunk-sized temporary fewer per step)."""
        x = z.to(torch.promote_types(z.dtype, torch.float32))  # (z itself when it is wide)
        if self.scale != 1.0:
            x.mul_(self.scale)
        if self.cap is None:
            return x, self.scale if slope else None
        tanh = x.div_(self.cap).tanh_()
        derivative = tanh.square().neg_().add_(1.0).mul_(self.scale) if slope else None
        return tanh.mul_(self.cap), derivative


class _Linear:
    """One model's output layer and its inputs, 2-D, with the gradients to accumulate, and
    the transform of its logits (None: none)."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 needs: tuple[bool, bool, bool], transform: Transform | None = None):
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.transform = transform
        self.needs_grad = any(needs)
        accumulate = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) \
            if needs[0] else None  # (every chunk writes its rows)
        self.grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) \
            if needs[1] else None
        self.grad_bias = torch.zeros(bias.shape, dtype=accumulate, device=bias.device) \
            if needs[2] and bias is not None else None  # (needs[2]: a bias that needs it)

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    def logits(self, rows: slice, slope: bool) -> tuple[torch.Tensor, Any]:
        """The logits of ``rows`` and, with ``slope``, d logits / d z (``Transform.apply``;
        None without a transform)."""
        z = F.linear(self.hidden[rows], self.weight, self.bias)
        return (z, None) if self.transform is None else self.transform.apply(z, slope)

    def saved(self) -> tuple[torch.Tensor | None, ...]:
        """What a backward pass that runs the chunks again needs (``_teacher_of``)."""
        return self.hidden, self.weight, self.bias

    def accumulate(self, rows: slice, grad_logits: torch.Tensor) -> None:
        """The chunk's share of each gradient, from d loss / d logits of its rows (in the
        logits' dtype)."""
        if self.grad_hidden is not None:
            torch.mm(grad_logits, self.weight, out=self.grad_hidden[rows])
        if self.grad_weight is not None:
            _add_product(self.grad_weight, grad_logits.t(), self.hidden[rows])
        if self.grad_bias is not None:
            self.grad_bias += grad_logits.sum(dim=0, dtype=self.grad_bias.dtype)

    def buffers(self) -> tuple[torch.Tensor | None, ...]:
        """The (hidden, weight, bias) gradients as accumulated (hidden in its dtype, the
        others in float32 or float64)."""
        return self.grad_hidden, self.grad_weight, self.grad_bias

    def dtypes(self) -> tuple[torch.dtype | None, ...]:
        return (self.hidden.dtype, self.weight.dtype,
                None if self.bias is None else self.bias.dtype)


class _Listed:
    """A sparse teacher in a teacher's output layer's place: its rows are the logits (no
    gradient, no layer)."""

    needs_grad = False
    grad_hidden = None

    def __init__(self, teacher: SparseTeacher):
        self.teacher = teacher

    @property
    def dtype(self) -> torch.dtype:
        return self.teacher.logprobs.dtype

    def logits(self, rows: slice, slope: bool) -> tuple[SparseTeacher, None]:
        return SparseTeacher(self.teacher.ids[rows], self.teacher.logprobs[rows]), None

    def saved(self) -> tuple[torch.Tensor | None, ...]:
        return self.teacher.ids, self.teacher.logprobs, None

    def accumulate(self, rows: slice, grad_logits: torch.Tensor) -> None:
        raise AssertionError("a sparse teacher has no gradient")

    def buffers(self) -> tuple[None, None, None]:
        return None, None, None

    def dtypes(self) -> tuple[None, None, None]:
        return None, None, None


def _teacher_of(sparse: bool, first, weight, bias, needs,
                transform: Transform | None) -> _Linear | _Listed:
    """The teacher of a call: its output layer (hidden, weight, bias), or with ``sparse``
    a sparse teacher's (ids, logprobs, None)."""
    return _Listed(SparseTeacher(first, weight)) if sparse else _Linear(first, weight, bias,
                                                                         needs, transform)


def _add_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``total += a @ b`` with the products summed in ``total``'s dtype (float32 for 16-bit
    ``a`` and ``b``), not rounded to theirs first: cuBLAS's float32-output matmul where
    PyTorch has it (``addmm``'s ``out_dtype``, CUDA), else ``a`` and ``b`` cast."""
    if a.dtype == total.dtype:
        total.addmm_(a, b)
    elif total.is_cuda and hasattr(torch.ops.aten.addmm, "dtype"):
        total.copy_(torch.addmm(total, a, b, out_dtype=total.dtype))
    else:
        total.addmm_(a.to(total.dtype), b.to(total.dtype))


def _finish(buffers, dtypes, scale: torch.Tensor | None = None) -> list[torch.Tensor | None]:
    """The gradients in their inputs' dtypes, times ``scale`` (the upstream gradient, 0-d) in
    float32 at least: a float16 cast of GradScaler's 65,536 would overflow."""
    grads = []
    for buffer, dtype in zip(buffers, dtypes, strict=True):
        if buffer is not None and scale is not None:
            _scale(buffer, scale)
        grads.append(None if buffer is None else buffer.to(dtype))
    return grads


def _run_chunks(student: _Linear, teacher: _Linear | _Listed, target: torch.Tensor | None,
                config: LossConfig, rows_fn, chunk_rows: int, grads: bool,
                grad_scale: torch.Tensor | None, row_weights: torch.Tensor | None = None):
    """Every chunk: logits, row losses, and (with ``grads``) the gradients accumulated, each
    row's multiplied by ``grad_scale`` (0-d), ``row_weights`` (per row) and the transform's
    slope in float32 at least before they take the layer's dtype. Returns the row losses and
    parts."""
    rows = student.hidden.shape[0]
    need_s, need_t = grads and student.needs_grad, grads and teacher.needs_grad
    losses, parts = [], []
    for start in range(0, rows, chunk_rows):
        chunk = slice(start, min(start + chunk_rows, rows))
        logits_s, slope_s = student.logits(chunk, need_s)
        logits_t, slope_t = teacher.logits(chunk, need_t)
        row_loss, row_parts, grad_s, grad_t = rows_fn(
            logits_s, logits_t, None if target is None else target[chunk], config, need_s,
            need_t, grad_scale)
        del logits_s, logits_t  # (before the gradients' products)
        losses.append(row_loss)
        parts.append(row_parts)
        for model, grad, slope in ((student, grad_s, slope_s), (teacher, grad_t, slope_t)):
            if grad is not None:
                if row_weights is not None or slope is not None:  # (in float32 at least)
                    grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
                    if row_weights is not None:
                        grad = grad * row_weights[chunk, None]
                    if slope is not None:  # (the chain rule through the transform)
                        grad = grad * slope
                model.accumulate(chunk, grad.to(model.dtype))
        del grad_s, grad_t, slope_s, slope_t
    if not losses:  # no rows
        dtype = torch.float64 if torch.float64 in (student.dtype, teacher.dtype) \
            else torch.float32
        return (student.hidden.new_zeros(0, dtype=dtype),
                student.hidden.new_zeros(0, 3, dtype=dtype))
    return torch.cat(losses), torch.cat(parts)


class _FusedLinearFunction(torch.autograd.Function):
    """The reduced loss of 2-D hidden states; gradients computed in the forward pass and
    scaled in backward, or computed there when the upstream gradient must come first: for
    ``reduction="none"`` (a vector) and for float16 (whose range cannot hold d loss / d logit
    before GradScaler's factor arrives: the factor goes into the row kernels, which compute
    in float32, and the chunks' float16 gradients are rounded once, after it). A sparse
    teacher comes as (ids, logprobs, None) in the teacher's (h_t, w_t, b_t) place."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, target, config, backend, reduction,
                mean_scale, chunk_rows, shard, reduce_hidden_grad, grad_enabled, sparse,
                transforms):
        rows_fn = rows_function(backend, shard, sparse)
        # (needs_input_grad says True under torch.no_grad() too: the caller's grad mode)
        needs = ctx.needs = tuple(grad_enabled and need for need in ctx.needs_input_grad)
        student = _Linear(h_s, w_s, b_s, needs[0:3], transforms[0])
        teacher = _teacher_of(sparse, h_t, w_t, b_t, needs[3:6], transforms[1])
        ctx.sparse, ctx.transforms = sparse, transforms
        per_row = reduction == "none"
        rerun = per_row or torch.float16 in (student.dtype, teacher.dtype)
        row_loss, parts = _run_chunks(student, teacher, target, config, rows_fn, chunk_rows,
                                      not rerun, mean_scale)
        loss, parts = _reduce(row_loss, parts, reduction, mean_scale)
        ctx.mark_non_differentiable(parts)
        ctx.per_row, ctx.rerun, ctx.backward_done = per_row, rerun, False
        if rerun:
            ctx.save_for_backward(h_s, w_s, b_s, *teacher.saved(), target, mean_scale)
            ctx.settings = (config, rows_fn, chunk_rows, shard, reduce_hidden_grad)
            return loss, parts
        _reduce_hidden_grads((student, teacher), shard, reduce_hidden_grad)
        ctx.save_for_backward(*student.buffers(), *teacher.buffers())
        ctx.dtypes = (*student.dtypes(), *teacher.dtypes())
        return loss, parts

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_parts):
        if ctx.backward_done:
            raise RuntimeError(
                "ldrld_fused_linear_loss: backward ran twice through the same graph "
                "(retain_graph=True); compute the loss again instead")
        ctx.backward_done = True
        if not ctx.rerun:
            grads = _finish(ctx.saved_tensors, ctx.dtypes, grad_loss)
        else:
            h_s, w_s, b_s, h_t, w_t, b_t, target, mean_scale = ctx.saved_tensors
            config, rows_fn, chunk_rows, shard, reduce_hidden_grad = ctx.settings
            student = _Linear(h_s, w_s, b_s, ctx.needs[0:3], ctx.transforms[0])
            teacher = _teacher_of(ctx.sparse, h_t, w_t, b_t, ctx.needs[3:6], ctx.transforms[1])
            scale = None if ctx.per_row else grad_loss if mean_scale is None \
                else grad_loss * mean_scale  # (0-d, float32 at least)
            with torch.autocast(h_s.device.type, enabled=False):
                _run_chunks(student, teacher, target, config, rows_fn, chunk_rows, True, scale,
                            row_weights=grad_loss if ctx.per_row else None)
            _reduce_hidden_grads((student, teacher), shard, reduce_hidden_grad)
            grads = _finish((*student.buffers(), *teacher.buffers()),
                            (*student.dtypes(), *teacher.dtypes()))
        return (*grads, None, None, None, None, None, None, None, None, None, None, None)


def _reduce_hidden_grads(models, shard: parallel.Shard | None, reduce: bool) -> None:
    """Vocabulary parallel: each rank's d/dh covers its classes only; summed over the group
    unless the caller reduces it elsewhere (Megatron's ``copy_to_tensor_model_parallel_region``
    does it in its own backward)."""
    if shard is None or not reduce:
        return
    for model in models:
        if model.grad_hidden is not None:
            shard.all_reduce(model.grad_hidden, dist.ReduceOp.SUM)


# (typed as the public signature; anything else given raises here)
def _check_linear(who: str, hidden: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> None:
    for name, value, dims in ((f"{who}_hidden", hidden, None), (f"{who}_weight", weight, 2),
                              (f"{who}_bias", bias, 1)):
        if value is None and name.endswith("bias"):
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"ldrld_fused_linear_loss: {name} must be a torch.Tensor, got "
                            f"{type(value).__name__}")
        if value.dtype not in HIDDEN_DTYPES:
            raise TypeError(f"ldrld_fused_linear_loss: {name} must be float32, float16, "
                            f"bfloat16 or float64, got dtype={value.dtype}")
        if dims is not None and value.dim() != dims:
            raise ValueError(f"ldrld_fused_linear_loss: {name} must be {dims}-D, got shape "
                             f"{tuple(value.shape)}")
        if value.dtype != hidden.dtype or value.device != hidden.device:
            raise TypeError(f"ldrld_fused_linear_loss: {name} must have {who}_hidden's dtype "
                            f"and device ({hidden.dtype}, {hidden.device}), got "
                            f"({value.dtype}, {value.device})")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"ldrld_fused_linear_loss: {who}_hidden (..., H) must match "
                         f"{who}_weight (C, H), got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"ldrld_fused_linear_loss: {who}_bias must have shape "
                         f"({weight.shape[0]},), got {tuple(bias.shape)}")


def _autocast(*tensors: torch.Tensor | None) -> tuple[Any, ...]:
    """As F.linear under autocast: float32 inputs in the autocast dtype (the casts are
    differentiable, so float32 weights get float32 gradients); else the inputs. (Each
    output has its input's type, which a tuple's annotation cannot say.)"""
    first = tensors[0]
    if not (isinstance(first, torch.Tensor) and torch.is_autocast_enabled(first.device.type)):
        return tensors
    dtype = torch.get_autocast_dtype(first.device.type)
    return tuple(x.to(dtype) if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x
                 for x in tensors)


def _logits_like(hidden: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The logits of ``hidden`` as ``validate`` sees them: their shape, dtype and device, no
    memory."""
    return torch.empty((), dtype=hidden.dtype, device=hidden.device).expand(
        *hidden.shape[:-1], num_classes)


def _check_sparse(teacher_weight: object, teacher_bias: object) -> None:
    """A sparse teacher in the teacher's output layer's place: no layer beside it (its
    tensors are checked with the logits, ``validation``)."""
    for name, value in (("teacher_weight", teacher_weight), ("teacher_bias", teacher_bias)):
        if value is not None:
            raise TypeError(f"ldrld_fused_linear_loss: {name} must be None when teacher_hidden "
                            f"is a SparseTeacher (it replaces the teacher's output layer), got "
                            f"{type(value).__name__}")


def _check_pair(student_hidden, teacher_hidden) -> None:
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError("ldrld_fused_linear_loss: student_hidden and teacher_hidden must have "
                         f"the same leading shape, got {tuple(student_hidden.shape[:-1])} and "
                         f"{tuple(teacher_hidden.shape[:-1])}")
    if student_hidden.device != teacher_hidden.device:
        raise ValueError("ldrld_fused_linear_loss: the student's and the teacher's tensors "
                         f"must be on one device, got {student_hidden.device} and "
                         f"{teacher_hidden.device}")


def _check_sparse_transform(transform: Transform | None) -> None:
    if transform is not None:
        raise ValueError("ldrld_fused_linear_loss: teacher_logit_scale and teacher_softcap must "
                         "be 1.0 and None when teacher_hidden is a SparseTeacher (its "
                         "log-probabilities already are the teacher's distribution), got "
                         f"teacher_logit_scale={transform.scale!r}, "
                         f"teacher_softcap={transform.cap!r}")


def _check_num_classes(num_classes: int | None) -> None:
    """``num_classes`` as far as it is known without the layers (at a module's construction
    too): None or an int >= 2."""
    if num_classes is None:
        return
    check_int("num_classes", num_classes, function="ldrld_fused_linear_loss")
    if num_classes < 2:
        raise ValueError("ldrld_fused_linear_loss: num_classes must be >= 2 (and > k), got "
                         f"num_classes={num_classes}")


def _vocabulary(num_classes: int | None, k: int, student_rows: int, teacher_rows: int | None,
                parallel: bool) -> int:
    """The classes the loss runs over, V: rows [0, V) of each layer (``num_classes``, or the
    layers' common row count); ``teacher_rows`` None for a sparse teacher. With ``parallel``
    the layers hold this rank's classes, whose count V is (``num_classes`` may only name the
    whole vocabulary: checked against the group's in ``_check_global_classes``)."""
    _check_num_classes(num_classes)
    rows = (student_rows,) if teacher_rows is None else (student_rows, teacher_rows)
    counts = f"student_weight has {student_rows} rows" + (
        "" if teacher_rows is None else f", teacher_weight {teacher_rows}")
    if parallel:
        if len(set(rows)) > 1:
            raise ValueError("ldrld_fused_linear_loss: with process_group, student_weight and "
                             "teacher_weight must hold the same classes (rows) on each rank, got "
                             f"{counts}: padded vocabularies (num_classes=) are not supported "
                             "with process_group")
        return student_rows
    if num_classes is None:
        if len(set(rows)) > 1:
            raise ValueError("ldrld_fused_linear_loss: student_weight and teacher_weight have "
                             f"different row counts ({counts}): pass num_classes= (the shared "
                             "real vocabulary; the rows past it are padding)")
        return student_rows
    if not k < num_classes <= min(rows):
        raise ValueError("ldrld_fused_linear_loss: num_classes must satisfy k < num_classes <= "
                         f"each weight's row count (k={k}; {counts}), got "
                         f"num_classes={num_classes}")
    return int(num_classes)


def _check_global_classes(num_classes: int | None, shard: parallel.Shard | None) -> None:
    """Vocabulary parallel: ``num_classes`` may only be the group's class count (an
    asynchronous assertion where that count is a device tensor, ``parallel.shard_of``)."""
    if num_classes is None or shard is None:
        return
    message = ("ldrld_fused_linear_loss: with process_group, num_classes must be the group's "
               "class count (the sum of the ranks' rows): padded vocabularies are not "
               "supported with process_group")
    if isinstance(shard.num_classes, torch.Tensor):
        torch._assert_async(shard.num_classes == num_classes, message)
    elif shard.num_classes != num_classes:
        raise ValueError(f"{message}; got num_classes={num_classes} for "
                         f"{shard.num_classes} classes")


def _first_rows(classes: int, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows [0, classes) of a layer (views; the layer itself when it has no more)."""
    if weight.shape[0] == classes:
        return weight, bias
    return weight[:classes], None if bias is None else bias[:classes]


def _settings(transforms: tuple[Transform | None, Transform | None]
              ) -> tuple[tuple[str, float], ...]:
    """The layers' transforms, for the ranks of a process group to agree on (0: no cap)."""
    return tuple((f"{who}_{name}", value) for who, transform in zip(
        ("student", "teacher"), transforms, strict=True) for name, value in (
        ("logit_scale", 1.0 if transform is None else transform.scale),
        ("softcap", 0.0 if transform is None or transform.cap is None else transform.cap)))


def _check_chunk_rows(chunk_rows: object) -> None:
    if chunk_rows != "auto" and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int)
                                 or chunk_rows < 1):
        raise ValueError("ldrld_fused_linear_loss: chunk_rows must be 'auto' or an int >= 1, "
                         f"got chunk_rows={chunk_rows!r}")


def ldrld_fused_linear_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | SparseTeacher,
    teacher_weight: torch.Tensor | None,
    target: torch.Tensor | None = None,
    *,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    chunk_rows: int | Literal["auto"] = "auto",
    num_classes: int | None = None,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    k: int = 7,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    ce_weight: float = 1.0,
    adw_scale: float = 2.0,
    adw_decay: float = 0.05,
    adw_offset: float = 1.5,
    rank_by: RankBy = "student",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    backend: Backend = "auto",
    return_parts: bool = False,
    process_group: object | None = None,
    reduce_hidden_grad: bool = True,
) -> torch.Tensor | LDRLDOutput:
    """``ldrld_loss`` of the logits ``softcap(student_logit_scale * (student_hidden @
    student_weight.T + student_bias))`` and the teacher's, computed ``chunk_rows`` rows at a
    time so that the logits of the whole batch never exist (``fused_linear``).

    Args:
        student_hidden: ``(..., H_s)`` hidden states; the student's output layer is
            ``student_weight`` ``(C, H_s)`` (``nn.Linear.weight``) and ``student_bias``
            ``(C,)`` or None, all of one dtype and device.
        teacher_hidden, teacher_weight, teacher_bias: the teacher's, ``(..., H_t)``,
            ``(C, H_t)``, ``(C,)``; they get gradients only when they require grad. Or a
            teacher saved offline: ``teacher_hidden`` a ``SparseTeacher`` (its top-K ``ids``
            and ``logprobs``, ``(..., K)``, ``sparse``) and ``teacher_weight`` and
            ``teacher_bias`` None; then the chunks hold the student's logits only.
        target: ``(...)`` int64 class ids, or None.
        chunk_rows: rows per chunk, or ``"auto"``: the most whose two logits and their
            gradients fit in 1 GiB on CUDA, 256 MiB on CPU (``CHUNK_BYTES``), a multiple of
            128 rows (4-byte logits with a transform below); the PyTorch path's temporaries
            come on top of that.
        num_classes: the classes C of the loss, where the two output layers pad one
            vocabulary to different row counts (e.g. 151,936 and 152,064 rows): rows [0, C)
            of each weight and bias count (views, not copies), the padded rows get a zero
            gradient, and a target or a SparseTeacher id must be < C. ``k < num_classes <=``
            each weight's row count. None: the weights' row count, which must then be the
            same. With ``process_group``, padded vocabularies are not supported: both
            weights hold the same rows on each rank and ``num_classes`` (if given) is the
            group's total.
        student_logit_scale, student_softcap: what the student's output layer does to its
            logits z: ``softcap(student_logit_scale * z)`` with ``softcap(x) = cap *
            tanh(x / cap)``, ``cap = student_softcap`` (None: no cap); the gradients
            include the transform (computed in float32, float64 for float64 layers).
            Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``, Gemma-2's
            ``final_logit_softcapping``. The scale a finite real > 0, the cap None or a
            finite real > 0; 1.0 and None leave the logits as they are.
        teacher_logit_scale, teacher_softcap: the teacher's; only the defaults with a
            SparseTeacher (its log-probabilities already are the teacher's distribution).
        process_group: vocabulary parallel, as in ``ldrld_loss``: each rank passes its rows
            of both weights (and biases), classes [offset, offset + C_rank), and the same
            hidden states and target (each rank applies the transforms to its classes). The
            gradient of each hidden state is summed over the group (``reduce_hidden_grad=False``
            leaves each rank its share, for a caller that reduces it itself, e.g. through
            Megatron's ``copy_to_tensor_model_parallel_region``).
        The other keywords are ``ldrld_loss``'s.

    Returns:
        What ``ldrld_loss`` returns for the logits (float32 loss; float64 for float64 inputs).

    Example::

        loss = ldrld_fused_linear_loss(student_out.hidden_states[-1], student.lm_head.weight,
                                       teacher_out.hidden_states[-1], teacher.lm_head.weight,
                                       labels, ignore_index=-100)
        # a student whose layer softcaps its logits at 30 (Gemma-2), a teacher whose layer
        # pads the shared 151,936-class vocabulary to more rows
        loss = ldrld_fused_linear_loss(h_s, student.lm_head.weight, h_t,
                                       teacher.lm_head.weight, labels, num_classes=151_936,
                                       student_softcap=30.0)
        # from a teacher's top-K saved offline
        loss = ldrld_fused_linear_loss(student_out.hidden_states[-1], student.lm_head.weight,
                                       SparseTeacher(top_ids, top_logprobs), None, labels)
    """
    # (the keywords as given, each checked by its class: config; this function defines no
    # closure, whose cells torch.compile could not read in locals())
    config, options = LossConfig.from_keywords(locals()), CallOptions.from_keywords(locals())
    transforms = (Transform.of("student", student_logit_scale, student_softcap),
                  Transform.of("teacher", teacher_logit_scale, teacher_softcap))
    student_hidden, student_weight, student_bias = _autocast(student_hidden, student_weight,
                                                             student_bias)
    _check_linear("student", student_hidden, student_weight, student_bias)
    _check_chunk_rows(chunk_rows)
    lead = student_hidden.shape[:-1]
    rows = math.prod(lead)
    h_s = student_hidden.reshape(rows, student_hidden.shape[-1])
    sparse = isinstance(teacher_hidden, SparseTeacher)
    if isinstance(teacher_hidden, SparseTeacher):
        _check_sparse(teacher_weight, teacher_bias)
        _check_sparse_transform(transforms[1])
        classes = _vocabulary(num_classes, config.k, student_weight.shape[0], None,
                              process_group is not None)
        call = prepare(_logits_like(student_hidden, classes), teacher_hidden, target,
                       config, options, settings=_settings(transforms))
        teacher_grad = False
        # (ids and logprobs in the teacher's hidden states' and weight's places)
        h_t, teacher_weight = teacher_hidden.rows(rows)
    else:
        hidden, teacher_weight, teacher_bias = _autocast(teacher_hidden, teacher_weight,
                                                         teacher_bias)
        _check_linear("teacher", hidden, teacher_weight, teacher_bias)
        _check_pair(student_hidden, hidden)
        classes = _vocabulary(num_classes, config.k, student_weight.shape[0],
                              teacher_weight.shape[0], process_group is not None)
        call = prepare(_logits_like(student_hidden, classes), _logits_like(hidden, classes),
                       target, config, options, settings=_settings(transforms))
        teacher_grad = torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (hidden, teacher_weight, teacher_bias))
        h_t = hidden.reshape(rows, hidden.shape[-1])
        # rows [0, V) of a padded layer: views, whose padded rows get zero gradient
        teacher_weight, teacher_bias = _first_rows(classes, teacher_weight, teacher_bias)
    _check_global_classes(num_classes, call.shard)
    student_weight, student_bias = _first_rows(classes, student_weight, student_bias)
    if chunk_rows == "auto":
        # (transformed logits are float32 at least)
        itemsize = student_hidden.element_size()
        if any(transform is not None for transform in transforms):
            itemsize = max(itemsize, 4)
        chunk_rows = auto_chunk_rows(rows, classes, itemsize, teacher_grad,
                                     student_hidden.device, sparse)
    with torch.autocast(h_s.device.type, enabled=False):  # (inputs cast above)
        loss, parts = _FusedLinearFunction.apply(
            h_s, student_weight, student_bias, h_t, teacher_weight, teacher_bias, call.target,
            config, call.backend, reduction, call.mean_scale, chunk_rows, call.shard,
            reduce_hidden_grad, torch.is_grad_enabled(), sparse, transforms)
    return output(loss, parts, lead, reduction, return_parts)


class LDRLDFusedLinearLoss(torch.nn.Module):
    """``nn.Module`` form of ``ldrld_fused_linear_loss``: the keywords (all but the tensors)
    are fixed at construction."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        keywords = {name for name, parameter in
                    inspect.signature(ldrld_fused_linear_loss).parameters.items()
                    if parameter.kind is inspect.Parameter.KEYWORD_ONLY}
        unknown = sorted(set(options) - (keywords - {"student_bias", "teacher_bias"}))
        if unknown:
            raise TypeError(f"LDRLDFusedLinearLoss: unknown or per-call keywords {unknown} "
                            "(the biases go to forward)")
        for checked in (LossConfig, CallOptions):  # (fails here on a bad setting)
            checked(**{field.name: options[field.name] for field in dataclasses.fields(checked)
                       if field.name in options})
        for who in ("student", "teacher"):
            Transform.of(who, options.get(f"{who}_logit_scale", 1.0),
                         options.get(f"{who}_softcap"))
        _check_num_classes(options.get("num_classes"))
        self.options = options

    def forward(
        self,
        student_hidden: torch.Tensor,
        student_weight: torch.Tensor,
        teacher_hidden: torch.Tensor | SparseTeacher,
        teacher_weight: torch.Tensor | None,
        target: torch.Tensor | None = None,
        student_bias: torch.Tensor | None = None,
        teacher_bias: torch.Tensor | None = None,
    ) -> torch.Tensor | LDRLDOutput:
        return ldrld_fused_linear_loss(
            student_hidden, student_weight, teacher_hidden, teacher_weight, target,
            student_bias=student_bias, teacher_bias=teacher_bias, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self.options.items())
