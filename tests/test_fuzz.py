"""Differential fuzzing: random shapes, k, temperatures, dtypes and awkward values, each
compared with the float64 reference on the same inputs (loss and both gradients).

A bounded profile runs in CI; ``LDRLD_FUZZ=long`` runs thousands of examples.
"""

import contextlib
import math
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ldrld_kernels.tools.check import compare_with_reference
from tests.helpers import DEVICE, requires_triton, wide_rows

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("LDRLD_FUZZ", "ci"))

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@st.composite
def problems(draw, max_classes=300, float64=False):
    """Logits, target and keyword arguments of one call."""
    rows = draw(st.integers(1, 4))
    num_classes = draw(st.integers(3, max_classes))
    k = draw(st.integers(2, min(num_classes - 1, 16)))
    dtype = draw(st.sampled_from(DTYPES + ([torch.float64] if float64 else [])))
    kind = draw(st.sampled_from(["plain", "huge", "equal rows", "padded"]))
    temperature = 1.0 if kind == "huge" else draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]))
    scale = 1e4 if kind == "huge" else draw(st.sampled_from([0.5, 1.0, 3.0, 10.0]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    student = torch.randn(rows, num_classes, generator=generator, dtype=torch.float64) * scale
    teacher = torch.randn(rows, num_classes, generator=generator, dtype=torch.float64) * scale
    if kind == "equal rows":
        student[0] = 1.5
        teacher[-1] = -0.5
    if kind == "padded":
        finite = draw(st.integers(k + 2, num_classes)) if num_classes >= k + 2 else num_classes
        student[:, finite:] = -math.inf
        teacher[:, finite:] = -math.inf
    target = None
    if draw(st.booleans()):
        high = finite if kind == "padded" else num_classes
        target = torch.randint(0, high, (rows,), generator=generator)
        target[torch.rand(rows, generator=generator) < 0.3] = -100
    kwargs = {
        "k": k, "temperature": temperature,
        "alpha": draw(st.sampled_from([1.0, 10.5])), "beta": draw(st.sampled_from([1.0, 7.0])),
        "rank_by": draw(st.sampled_from(["student", "teacher"])),
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
    }
    return student.to(dtype), teacher.to(dtype), target, kwargs


def check(backend, problem):
    student, teacher, target, kwargs = problem
    result = compare_with_reference(
        student.to(DEVICE), teacher.to(DEVICE), None if target is None else target.to(DEVICE),
        backend=backend, generator=torch.Generator().manual_seed(0), **kwargs)
    assert result.passed, (result, student.dtype, tuple(student.shape), kwargs)


@given(problems(float64=True))
def test_torch_path(problem):
    check("torch", problem)


@requires_triton
@given(problems(), st.booleans())
def test_triton(problem, wide):
    # wide: rows past 64 classes split over several programs, in waves of a few rows
    with wide_rows() if wide else contextlib.nullcontext():
        check("triton", problem)
