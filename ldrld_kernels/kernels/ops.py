"""The Triton path as PyTorch custom ops, so that ``torch.compile`` sees opaque nodes (with
fake implementations for tracing) instead of tracing into the kernel launches. Eager and
compiled calls alike go through ``api._LDRLDFunction``, which calls these ops: one forward
(``ldrld_rows``: the row losses and their gradients) and one backward (``scale_``: the
gradients times the upstream gradient, in place, skipped on the device when it is 1).
"""

from __future__ import annotations

import torch

from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels import launcher
from ldrld_kernels.kernels.scale import scale_in_place


def _op_outputs(student, teacher, row_loss, parts, grad_s, grad_t):
    """A custom op returns tensors only: an empty one stands for a gradient not asked for."""
    return (row_loss, parts, grad_s if grad_s is not None else student.new_empty(0),
            grad_t if grad_t is not None else teacher.new_empty(0))


@torch.library.custom_op("ldrld_kernels::ldrld_rows", mutates_args=())
def ldrld_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
    k: int,
    temperature: float,
    alpha: float,
    beta: float,
    ce_weight: float,
    adw_scale: float,
    adw_decay: float,
    adw_offset: float,
    rank_by_teacher: bool,
    ignore_index: int,
    need_student_grad: bool,
    need_teacher_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row losses, per-row parts and the gradients of the row losses times ``grad_scale``
    (an empty tensor for a gradient not asked for) of 2-D logits, from the Triton kernels;
    the scalars are ``LossConfig.op_args()``."""
    config = LossConfig.from_op_args(k, temperature, alpha, beta, ce_weight, adw_scale,
                                     adw_decay, adw_offset, rank_by_teacher, ignore_index)
    return _op_outputs(student, teacher, *launcher.ldrld_rows(
        student, teacher, target, config, need_student_grad, need_teacher_grad, grad_scale))


@ldrld_rows.register_fake
def _(student, teacher, target, grad_scale, *settings_and_needs):
    need_student_grad, need_teacher_grad = settings_and_needs[-2:]
    return _op_outputs(student, teacher, *launcher.allocate_outputs(
        student, teacher, need_student_grad, need_teacher_grad))


@torch.library.custom_op("ldrld_kernels::scale_", mutates_args=("grad",))
def scale_(grad: torch.Tensor, scale: torch.Tensor) -> None:
    """``grad *= scale`` in place for a 0-d ``scale`` on the device (not read when it is 1)."""
    scale_in_place(grad, scale)


@scale_.register_fake
def _(grad, scale):
    return None
