"""Accuracy against the float64 reference: the tolerance table and the comparison that both
the tests and ``ldrld check`` use.

A backend runs on the given inputs; the reference runs on the same values upcast to float64.
The loss is computed in float32 for every low-precision input, so its tolerance follows the
compute dtype; each gradient is returned in its input's dtype, so its tolerance follows that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch

# (installed from reference/ by setuptools' package-dir, which mypy cannot see)
from ldrld_kernels import reference  # type: ignore[attr-defined]
from ldrld_kernels.api import ldrld_loss
from ldrld_kernels.config import Backend
from ldrld_kernels.sparse import SparseTeacher


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


# |actual - expected| <= atol * max(1, max |expected|) + rtol * |expected| + eps * terms,
# with eps the machine epsilon of the compute dtype (float64 for float64 inputs, else
# float32) and ``terms`` the size of the largest quantities the result is computed from
# (``_conditioning``): a KL of nearly equal distributions, or a teacher gradient
# T p (log(p/q) - KL), is a difference of log-probabilities that can be far larger than it.
# loss: by compute dtype; gradients: by the input's dtype (bfloat16 and float16 gradients are
# rounded twice: when the forward pass stores them and when backward scales them).
LOSS_TOLERANCES = {
    torch.float64: Tolerance(rtol=1e-9, atol=1e-12),
    torch.float32: Tolerance(rtol=1e-5, atol=1e-6),
}
GRAD_TOLERANCES = {
    torch.float64: Tolerance(rtol=1e-9, atol=1e-12),
    torch.float32: Tolerance(rtol=1e-5, atol=1e-6),
    torch.float16: Tolerance(rtol=2e-3, atol=1e-5),
    torch.bfloat16: Tolerance(rtol=1.6e-2, atol=1e-4),
}


@dataclass
class Comparison:
    """Largest absolute errors and whether everything is within its tolerance."""

    loss_err: float
    student_grad_err: float
    teacher_grad_err: float
    passed: bool


def _error(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance,
           rounding: float = 0.0) -> tuple[float, bool]:
    """Largest absolute error, and whether it is within ``tol`` plus ``rounding`` everywhere."""
    actual, expected = actual.detach().to(torch.float64), expected.detach()
    both_nan = actual.isnan() & expected.isnan()
    diff = torch.where(both_nan, 0.0, (actual - expected).abs())
    finite = expected[expected.isfinite()]
    scale = max(1.0, float(finite.abs().max()) if finite.numel() else 0.0)
    ok = bool((diff <= tol.atol * scale + tol.rtol * expected.abs() + rounding).all())
    return (float(diff.max()) if diff.numel() else 0.0), ok


def _conditioning(student: torch.Tensor, teacher: torch.Tensor, upstream: torch.Tensor,
                  loss_kwargs: dict) -> tuple[float, float, float]:
    """Sizes of the largest quantities the loss, the student gradient and the teacher
    gradient are computed from. Log-probabilities are up to M = max(ln C, spread / T) in size,
    spread being the range of the finite logits; each KL enters with T^2 and its weight."""
    temperature = loss_kwargs.get("temperature", 4.0)
    weights = abs(loss_kwargs.get("alpha", 1.0)) + abs(loss_kwargs.get("beta", 1.0))
    ce_weight = abs(loss_kwargs.get("ce_weight", 1.0))

    def spread(logits: torch.Tensor) -> float:
        logits = logits.detach()
        finite = logits[logits.isfinite()].to(torch.float64)
        return float(finite.max() - finite.min()) if finite.numel() else 0.0

    log_prob = max(math.log(student.shape[-1]), (spread(student) + spread(teacher)) / temperature)
    grad_scale = float(upstream.abs().max()) if upstream.numel() else 0.0
    loss_terms = temperature**2 * weights * log_prob + ce_weight * spread(student)
    student_terms = grad_scale * (temperature * weights + ce_weight)
    teacher_terms = grad_scale * temperature * weights * log_prob
    return loss_terms, student_terms, teacher_terms


def compare_with_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | SparseTeacher,
    target: torch.Tensor | None = None,
    *,
    backend: str,
    teacher_grad: bool = True,
    generator: torch.Generator | None = None,
    **loss_kwargs,
) -> Comparison:
    """Run ``ldrld_loss`` with ``backend`` and the float64 reference on the same inputs, pull a
    random upstream gradient through both, and compare the loss and the input gradients. A
    ``SparseTeacher`` is data (no teacher gradient); the reference takes its completed rows
    (``reference.densify``)."""
    student = student_logits.detach().clone().requires_grad_(True)
    student64 = student_logits.detach().to(torch.float64).requires_grad_(True)
    given: torch.Tensor | SparseTeacher
    if isinstance(teacher_logits, SparseTeacher):
        teacher_grad = False
        given = teacher_logits
        teacher = teacher64 = reference.densify(*teacher_logits, student_logits.shape[-1])
        teacher_dtype = teacher_logits.logprobs.dtype
    else:
        given = teacher = teacher_logits.detach().clone().requires_grad_(teacher_grad)
        teacher64 = teacher_logits.detach().to(torch.float64).requires_grad_(teacher_grad)
        teacher_dtype = teacher.dtype

    # (a tensor: no return_parts; the backend's name is checked by ldrld_loss)
    loss = cast(torch.Tensor, ldrld_loss(student, given, target,
                                         backend=cast(Backend, backend), **loss_kwargs))
    expected = reference.ldrld_loss(student64, teacher64, target, **loss_kwargs)
    upstream = torch.randn(expected.shape, dtype=torch.float64, generator=generator)
    upstream = upstream.to(expected.device)
    inputs = (student, teacher) if teacher_grad else (student,)
    inputs64 = (student64, teacher64) if teacher_grad else (student64,)
    grads = torch.autograd.grad(loss, inputs, upstream.to(loss.dtype))
    grads64 = torch.autograd.grad(expected, inputs64, upstream)

    compute = torch.float64 if torch.float64 in (student.dtype, teacher_dtype) \
        else torch.float32
    eps = torch.finfo(compute).eps
    loss_terms, s_terms, t_terms = _conditioning(student64, teacher64, upstream, loss_kwargs)
    loss_err, loss_ok = _error(loss, expected, LOSS_TOLERANCES[compute], eps * loss_terms)
    s_err, s_ok = _error(grads[0], grads64[0], GRAD_TOLERANCES[student.dtype], eps * s_terms)
    t_err, t_ok = 0.0, True
    if teacher_grad:
        t_err, t_ok = _error(grads[1], grads64[1], GRAD_TOLERANCES[teacher_dtype],
                             eps * t_terms)
    return Comparison(loss_err, s_err, t_err, loss_ok and s_ok and t_ok)
