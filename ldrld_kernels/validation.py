"""Every check on the arguments of ``ldrld_loss``, in one place, before any computation."""

from __future__ import annotations

import math
import numbers

import torch

from ldrld_kernels.sparse import SparseTeacher

# The largest k: the kernels hold the k x k pair tile of a row in registers (K_PAD^2 = 4,096
# values per row at 64) and the selection takes k rounds; the paper uses k = 7.
MAX_K = 64
LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_logits(name: str, logits: object) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"ldrld_loss: {name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(
            f"ldrld_loss: {name} must be float32, float16, bfloat16 or float64, "
            f"got dtype={logits.dtype}"
        )
    if logits.dim() < 1:
        raise ValueError(f"ldrld_loss: {name} must have a class dimension, got a 0-d tensor")
    return logits


def check_real(name: str, value: object, positive: bool = False,
               function: str = "ldrld_loss") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{function}: {name} must be a real number, got {name}={value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{function}: {name} must be finite, got {name}={value!r}")
    if positive and value <= 0:
        raise ValueError(f"{function}: {name} must be > 0, got {name}={value!r}")


def check_int(name: str, value: object, function: str = "ldrld_loss") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{function}: {name} must be an int, got {name}={value!r}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"ldrld_loss: {name} must be one of {choices}, got {name}={value!r}")


def validate(
    student_logits: object,
    teacher_logits: object,
    target: object,
    *,
    k: int,
    vocab_slice: bool = False,
) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming the argument and the value, or return.
    The options check themselves (``config``); here the tensors and ``k`` against their C
    (with ``vocab_slice`` the logits hold a slice of each row, vocabulary parallel, and
    ``parallel.shard_of`` checks k against the whole row).

    ``teacher_logits`` may be a ``SparseTeacher`` (its tensors are checked here, their values
    by ``check_sparse_values``). Target values are checked separately
    (``check_target_values``): that reads the data.
    """
    student = _check_logits("student_logits", student_logits)
    if isinstance(teacher_logits, SparseTeacher):
        _check_sparse_teacher(teacher_logits, student, k, vocab_slice)
        _check_target(target, student)
        return
    teacher = _check_logits("teacher_logits", teacher_logits)
    if student.shape != teacher.shape:
        raise ValueError(
            "ldrld_loss: student_logits and teacher_logits must have the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.device != teacher.device:
        raise ValueError(
            "ldrld_loss: student_logits and teacher_logits must be on the same device, got "
            f"{student.device} and {teacher.device}"
        )
    if not vocab_slice:
        check_k(k, student.shape[-1])
    _check_target(target, student)


def _check_target(target: object, student: torch.Tensor) -> None:
    if target is None:
        return
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            f"ldrld_loss: target must be a torch.Tensor or None, got {type(target).__name__}"
        )
    if target.dtype != torch.int64:
        raise TypeError(f"ldrld_loss: target must be int64 (torch.long), got dtype={target.dtype}")
    if target.shape != student.shape[:-1]:
        raise ValueError(
            f"ldrld_loss: target must have shape {tuple(student.shape[:-1])} (the logits "
            f"without their class dimension), got {tuple(target.shape)}"
        )
    if target.device != student.device:
        raise ValueError(
            f"ldrld_loss: target must be on the logits' device {student.device}, "
            f"got {target.device}"
        )


def check_k(k: int, num_classes: int | None) -> None:
    """``2 <= k < C`` (only ``k >= 2`` while C is not known, None)."""
    if k < 2 or (num_classes is not None and num_classes <= k):
        shown = "?" if num_classes is None else num_classes
        raise ValueError(
            f"ldrld_loss: k must satisfy 2 <= k < C (C = {shown} classes), got k={k}"
        )


def check_target_values(target: torch.Tensor, num_classes: int | torch.Tensor,
                        ignore_index: int) -> None:
    """Targets must lie in [0, C) or equal ``ignore_index``.

    On CPU this raises ``ValueError``; on an accelerator, and inside ``torch.compile``, it is
    an asynchronous assertion (a ``RuntimeError``), so that no host synchronisation is forced
    and no graph breaks (on an accelerator the error surfaces at a later sync).
    """
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if target.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            value = int(target[bad][0])
            raise ValueError(
                f"ldrld_loss: target values must be in [0, {num_classes}) or ignore_index="
                f"{ignore_index}, got target value {value}"
            )
    else:
        torch._assert_async(~bad.any(), "ldrld_loss: target value outside [0, C)")


def _check_sparse_teacher(teacher: SparseTeacher, student: torch.Tensor, k: int,
                          vocab_slice: bool) -> None:
    ids, logprobs = teacher
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
        raise TypeError("ldrld_loss: teacher.ids (SparseTeacher) must be an int64 tensor, got "
                        + (f"dtype={ids.dtype}" if isinstance(ids, torch.Tensor)
                           else type(ids).__name__))
    if not isinstance(logprobs, torch.Tensor) or logprobs.dtype not in LOGIT_DTYPES:
        raise TypeError("ldrld_loss: teacher.logprobs (SparseTeacher) must be a float32, "
                        "float16, bfloat16 or float64 tensor, got "
                        + (f"dtype={logprobs.dtype}" if isinstance(logprobs, torch.Tensor)
                           else type(logprobs).__name__))
    if logprobs.requires_grad:
        raise TypeError("ldrld_loss: teacher.logprobs (SparseTeacher) must not require grad: "
                        "a sparse teacher is data (pass logprobs.detach())")
    if ids.shape != logprobs.shape:
        raise ValueError("ldrld_loss: teacher.ids and teacher.logprobs (SparseTeacher) must "
                         f"have the same shape, got {tuple(ids.shape)} and "
                         f"{tuple(logprobs.shape)}")
    if ids.dim() < 1 or ids.shape[:-1] != student.shape[:-1]:
        raise ValueError("ldrld_loss: teacher.ids (SparseTeacher) must have shape (..., K) with "
                         f"the student's leading shape {tuple(student.shape[:-1])}, got "
                         f"{tuple(ids.shape)}")
    if ids.device != student.device or logprobs.device != student.device:
        raise ValueError("ldrld_loss: teacher.ids and teacher.logprobs (SparseTeacher) must be "
                         f"on the student's device {student.device}, got {ids.device} and "
                         f"{logprobs.device}")
    listed = ids.shape[-1]
    if listed < k:
        raise ValueError(f"ldrld_loss: a SparseTeacher must list at least k classes per row, got "
                         f"K={listed} with k={k}")
    if not vocab_slice:
        check_k(k, student.shape[-1])
        if listed > student.shape[-1]:
            raise ValueError(f"ldrld_loss: a SparseTeacher lists at most C classes per row, got "
                             f"K={listed} with C={student.shape[-1]}")


# How far the listed probabilities may sum past 1: rounding of K log-probabilities of a
# normalized distribution in their dtype (about eps times the entropy, at most log K), with
# float32's summation error on top
def _mass_tolerance(dtype: torch.dtype, listed: int) -> float:
    return torch.finfo(dtype).eps * (1.0 + math.log(max(listed, 1))) + 1e-6


def check_sparse_values(ids: torch.Tensor, logprobs: torch.Tensor,
                        num_classes: int | torch.Tensor) -> None:
    """A sparse teacher's data: ids in [0, C), distinct within a row, and listed probabilities
    summing to at most 1 (within rounding). On CPU a ``ValueError`` naming the first bad row;
    on an accelerator (and inside ``torch.compile``) asynchronous assertions, without a host
    synchronisation (the error surfaces at a later sync), as for targets."""
    flat_ids = ids.reshape(-1, ids.shape[-1])
    out_of_range = ((flat_ids < 0) | (flat_ids >= num_classes)).any(dim=-1)
    ordered = flat_ids.sort(dim=-1).values
    repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=-1)
    tolerance = _mass_tolerance(logprobs.dtype, ids.shape[-1])
    mass = logprobs.reshape(flat_ids.shape).to(torch.float64).exp().sum(dim=-1)
    too_much = mass > 1.0 + tolerance
    if ids.device.type == "cpu" and not torch.compiler.is_compiling():
        mass_rule = (f"probabilities must sum to at most 1 (+{tolerance:.1e}): exp(logprobs) "
                     "of a normalized distribution")
        for bad, what in ((out_of_range, f"ids must lie in [0, {num_classes})"),
                          (repeated, "ids must be distinct within a row"),
                          (too_much, mass_rule)):
            if bool(bad.any()):
                row = int(bad.nonzero()[0, 0])
                raise ValueError(f"ldrld_loss: SparseTeacher: {what}; row {row} has ids "
                                 f"{flat_ids[row].tolist()[:8]}..., probability sum "
                                 f"{float(mass[row]):.6g}")
    else:
        torch._assert_async(~out_of_range.any(), "ldrld_loss: SparseTeacher id outside [0, C)")
        torch._assert_async(~repeated.any(), "ldrld_loss: SparseTeacher ids repeat in a row")
        torch._assert_async(~too_much.any(),
                            "ldrld_loss: SparseTeacher probabilities sum past 1")
