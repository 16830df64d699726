"""The backward of a reduced loss: the saved gradients times the upstream gradient, in place,
reading nothing when that gradient is exactly 1 (a plain ``loss.backward()``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ldrld_kernels.kernels.hardware import on_device


@triton.jit
def _scale_kernel(grad_ptr, scale_ptr, n, BLOCK: tl.constexpr, SUB: tl.constexpr):
    # Backward of a reduced loss multiplies the saved gradient by the upstream gradient; that
    # is exactly 1 for a plain loss.backward(), and then no byte of the gradient is touched
    # (``ldrld profile`` counts that case): few threads per element, each reading the scale
    # once, so that even this no-op costs next to nothing.
    scale = tl.load(scale_ptr).to(tl.float32)
    if scale != 1.0:  # runs: 0
        start = tl.program_id(0).to(tl.int64) * BLOCK
        for sub in range(0, BLOCK, SUB):  # trips: BLOCK // SUB
            offsets = start + sub + tl.arange(0, SUB)
            mask = offsets < n
            grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
            tl.store(grad_ptr + offsets, (grad * scale).to(grad_ptr.dtype.element_ty),
                     mask=mask)


# Elements per program of the backward scale, SCALE_SUB (16 per thread of its 4 warps) at a
# time: large, so that a no-op backward (upstream gradient 1: each program reads the scale
# and returns) launches few programs, 4,008 for 8192 x 16,032 logits.
SCALE_BLOCK = 32768
SCALE_SUB = 2048


def scale_in_place(grad: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``grad *= scale`` for a contiguous ``grad`` and a 0-d ``scale`` on its device, without
    reading ``grad`` when ``scale`` is 1 and without a host sync."""
    if grad.numel():
        with on_device(grad.device):
            _scale_kernel[(triton.cdiv(grad.numel(), SCALE_BLOCK),)](
                grad, scale, grad.numel(), BLOCK=SCALE_BLOCK, SUB=SCALE_SUB, num_warps=4)
    return grad
