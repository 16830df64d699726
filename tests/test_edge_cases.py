"""Determinism and the edge cases of long training runs, on every backend."""

import math

import pytest
import torch

import ldrld_kernels as lk
from tests.helpers import (
    DEVICE,
    assert_matches,
    random_logits,
    random_target,
    requires_triton,
    wide_rows,
)

BACKENDS = ["torch", pytest.param("triton", marks=requires_triton)]


def loss_and_grads(backend, student, teacher, target=None, **kwargs):
    student = student.detach().clone().to(DEVICE).requires_grad_()
    teacher = teacher.detach().clone().to(DEVICE).requires_grad_()
    target = None if target is None else target.to(DEVICE)
    loss = lk.ldrld_loss(student, teacher, target, backend=backend, **kwargs)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), student.grad, teacher.grad


@pytest.fixture(params=["whole", "wide"])
def width(request):
    """Classes per row: whole rows per program, or wide rows split over programs (shrunk to
    small sizes by ``helpers.wide_rows``)."""
    if request.param == "wide":
        with wide_rows():
            yield 700
    else:
        yield 300


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_deterministic(backend, dtype, width):
    student, teacher = random_logits(4, width, dtype=dtype, seed=1)
    target = random_target(4, num_classes=width)
    first = loss_and_grads(backend, student, teacher, target, reduction="none")
    for _ in range(2):
        again = loss_and_grads(backend, student, teacher, target, reduction="none")
        for a, b in zip(first, again, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_zero_rows(backend, reduction):
    student, teacher = torch.empty(0, 37), torch.empty(0, 37)
    target = torch.empty(0, dtype=torch.long)
    loss, grad_s, grad_t = loss_and_grads(backend, student, teacher, target, k=3,
                                          reduction=reduction)
    assert loss.shape == ((0,) if reduction == "none" else ())
    assert (loss == 0).all() and grad_s.shape == (0, 37) and grad_t.shape == (0, 37)
    leading = lk.ldrld_loss(torch.empty(2, 0, 37, device=DEVICE),
                            torch.empty(2, 0, 37, device=DEVICE), backend=backend, k=3,
                            reduction="none")
    assert leading.shape == (2, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_classes,k,rows", [(3, 2, 1), (3, 2, 4), (37, 36, 1), (65, 64, 2)])
def test_smallest_shapes_and_k_equal_c_minus_1(backend, num_classes, k, rows):
    student, teacher = random_logits(rows, num_classes, seed=k)
    assert_matches(backend, student, teacher, random_target(rows, num_classes=num_classes), k=k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_one_row_leaves_the_others_alone(backend, width):
    student, teacher = random_logits(3, width, seed=2)
    clean = loss_and_grads(backend, student, teacher, k=7, reduction="none")
    student[1, 11] = math.nan
    loss, grad_s, grad_t = loss_and_grads(backend, student, teacher, k=7, reduction="none")
    assert loss[1].isnan()
    keep = [0, 2]
    assert torch.equal(loss[keep], clean[0][keep])
    assert torch.equal(grad_s[keep], clean[1][keep]) and torch.equal(grad_t[keep], clean[2][keep])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1e-2, 1e3])
def test_extreme_temperatures_stay_finite(backend, temperature, width):
    student, teacher = random_logits(3, width, seed=3)
    loss, grad_s, grad_t = loss_and_grads(backend, student, teacher,
                                          random_target(3, num_classes=width), k=7,
                                          temperature=temperature, reduction="none")
    assert loss.isfinite().all() and (loss >= 0).all()
    assert grad_s.isfinite().all() and grad_t.isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_logits_at_temperature_1(backend):
    student, teacher = random_logits(3, 200, seed=4, scale=1e4)
    assert_matches(backend, student, teacher, k=7, temperature=1.0)
