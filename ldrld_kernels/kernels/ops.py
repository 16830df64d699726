"""The Triton path as PyTorch custom ops, so that ``torch.compile`` sees opaque nodes (with
fake implementations for tracing) instead of tracing into the kernel launches. Eager and
compiled calls alike go through ``api._LDRLDFunction``, which calls these ops: one forward
(``ldrld_rows``: the row losses and their gradients; ``ldrld_sparse_rows`` against a sparse
teacher) and one backward (``scale_``: the gradients times the upstream gradient, in place,
skipped on the device when it is 1).
"""

from __future__ import annotations

import dataclasses

import torch

from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels import launcher
from ldrld_kernels.kernels.scale import scale_in_place


def _op_outputs(student, teacher, row_loss, parts, grad_s, grad_t):
    """A custom op returns tensors only: an empty one stands for a gradient not asked for."""
    return (row_loss, parts, grad_s if grad_s is not None else student.new_empty(0),
            grad_t if grad_t is not None else teacher.new_empty(0))


# The loss settings as the op's scalars, one per field of LossConfig in order (its ``values``)
SETTINGS = ", ".join(f"{field.type if field.type in ('int', 'float') else 'str'} {field.name}"
                     for field in dataclasses.fields(LossConfig))


def _ldrld_rows(student, teacher, target, grad_scale, *settings_and_needs):
    """Row losses, per-row parts and the gradients of the row losses times ``grad_scale``
    (an empty tensor for a gradient not asked for) of 2-D logits, from the Triton kernels;
    ``settings_and_needs``: ``LossConfig.values()``, then whether each gradient is needed."""
    *settings, need_student_grad, need_teacher_grad = settings_and_needs
    return _op_outputs(student, teacher, *launcher.ldrld_rows(
        student, teacher, target, LossConfig(*settings), need_student_grad, need_teacher_grad,
        grad_scale))


ldrld_rows = torch.library.custom_op(
    "ldrld_kernels::ldrld_rows", _ldrld_rows, mutates_args=(),
    schema=f"(Tensor student, Tensor teacher, Tensor? target, Tensor? grad_scale, {SETTINGS}, "
           "bool need_student_grad, bool need_teacher_grad) -> (Tensor, Tensor, Tensor, Tensor)")


@ldrld_rows.register_fake
def _(student, teacher, target, grad_scale, *settings_and_needs):
    need_student_grad, need_teacher_grad = settings_and_needs[-2:]
    return _op_outputs(student, teacher, *launcher.allocate_outputs(
        student, teacher, need_student_grad, need_teacher_grad))


def _ldrld_sparse_rows(student, ids, logprobs, target, grad_scale, *settings_and_need):
    """``_ldrld_rows`` against a sparse teacher, its top-K ``ids`` and ``logprobs``: the row
    losses, parts and the student's gradient (empty when not asked for)."""
    *settings, need_student_grad = settings_and_need
    row_loss, parts, grad_s = launcher.ldrld_sparse_rows(
        student, ids, logprobs, target, LossConfig(*settings), need_student_grad, grad_scale)
    return _op_outputs(student, student, row_loss, parts, grad_s, None)[:3]


ldrld_sparse_rows = torch.library.custom_op(
    "ldrld_kernels::ldrld_sparse_rows", _ldrld_sparse_rows, mutates_args=(),
    schema=f"(Tensor student, Tensor ids, Tensor logprobs, Tensor? target, Tensor? grad_scale, "
           f"{SETTINGS}, bool need_student_grad) -> (Tensor, Tensor, Tensor)")


@ldrld_sparse_rows.register_fake
def _(student, ids, logprobs, target, grad_scale, *settings_and_need):
    row_loss, parts, grad_s, _ = launcher.allocate_outputs(student, student,
                                                           settings_and_need[-1], False)
    return _op_outputs(student, student, row_loss, parts, grad_s, None)[:3]


@torch.library.custom_op("ldrld_kernels::scale_", mutates_args=("grad",))
def scale_(grad: torch.Tensor, scale: torch.Tensor) -> None:
    """``grad *= scale`` in place for a 0-d ``scale`` on the device (not read when it is 1)."""
    scale_in_place(grad, scale)


@scale_.register_fake
def _(grad, scale):
    return None
