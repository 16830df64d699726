"""The Triton path as a PyTorch custom op, so that ``torch.compile`` sees one opaque node
(with a fake implementation for tracing and a registered autograd formula) instead of
tracing into the kernel launches.

Eager calls go through ``api._LDRLDFunction``, whose backward scales the saved gradients in
place. This op's backward scales them out of place, as a traced graph requires; Inductor can
still reuse the dead buffer for that pointwise product.
"""

from __future__ import annotations

import torch

from ldrld_kernels.config import LossConfig
from ldrld_kernels.triton_common import allocate_outputs


def _op_outputs(student, teacher, row_loss, parts, grad_s, grad_t):
    """A custom op returns tensors only: an empty one stands for a gradient not asked for."""
    return (row_loss, parts, grad_s if grad_s is not None else student.new_empty(0),
            grad_t if grad_t is not None else teacher.new_empty(0))


@torch.library.custom_op("ldrld_kernels::ldrld_rows", mutates_args=())
def ldrld_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
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
    """Row losses, per-row parts and the gradients of the row losses (an empty tensor for a
    gradient not asked for) of 2-D logits, from the Triton kernels."""
    from ldrld_kernels import triton_fused

    config = LossConfig.from_op_args(k, temperature, alpha, beta, ce_weight, adw_scale,
                                     adw_decay, adw_offset, rank_by_teacher, ignore_index)
    return _op_outputs(student, teacher, *triton_fused.ldrld_rows(
        student, teacher, target, config, need_student_grad, need_teacher_grad))


@ldrld_rows.register_fake
def _(student, teacher, target, k, temperature, alpha, beta, ce_weight, adw_scale, adw_decay,
      adw_offset, rank_by_teacher, ignore_index, need_student_grad, need_teacher_grad):
    return _op_outputs(student, teacher, *allocate_outputs(student, teacher, need_student_grad,
                                                           need_teacher_grad))


def _setup_context(ctx, inputs, output):
    _, _, grad_s, grad_t = output
    ctx.need_student_grad, ctx.need_teacher_grad = inputs[-2], inputs[-1]
    ctx.save_for_backward(grad_s, grad_t)
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_rows, _grad_parts, _grad_grad_s, _grad_grad_t):
    grad_s, grad_t = ctx.saved_tensors
    scale = grad_rows[:, None]
    return (
        (grad_s * scale).to(grad_s.dtype) if ctx.need_student_grad else None,
        (grad_t * scale).to(grad_t.dtype) if ctx.need_teacher_grad else None,
        *([None] * 13),
    )


ldrld_rows.register_autograd(_backward, setup_context=_setup_context)
