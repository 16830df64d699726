"""Every check on the arguments of ``ldrld_loss``, in one place, before any computation."""

from __future__ import annotations

import math
import numbers

import torch

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


def check_real(name: str, value: object, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"ldrld_loss: {name} must be a real number, got {name}={value!r}")
    if not math.isfinite(value):
        raise ValueError(f"ldrld_loss: {name} must be finite, got {name}={value!r}")
    if positive and value <= 0:
        raise ValueError(f"ldrld_loss: {name} must be > 0, got {name}={value!r}")


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

    Target values are checked separately (``check_target_values``): that reads the data.
    """
    student = _check_logits("student_logits", student_logits)
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
