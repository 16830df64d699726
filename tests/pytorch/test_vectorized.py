"""The vectorized PyTorch path against the float64 reference, loss and both gradients."""

import math

import pytest
import torch

import ldrld_kernels as lk
from ldrld_kernels.pytorch.selection import top_k_indices
from tests.helpers import (
    GOLDEN,
    GOLDEN_IDS,
    assert_matches,
    check_golden,
    random_logits,
    random_target,
)

CASES = [(C, k) for C in (3, 37, 1000) for k in (2, 3, 7, C - 1) if 2 <= k < C and k <= 64]


@pytest.mark.parametrize("num_classes,k", CASES)
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("rank_by", ["student", "teacher"])
def test_matches_reference_float64(num_classes, k, rows, reduction, rank_by):
    student, teacher = random_logits(rows, num_classes, dtype=torch.float64, seed=num_classes + k)
    target = random_target(rows, num_classes=num_classes)
    if rows > 1:
        target[1] = -100
    assert_matches("torch", student, teacher, target, k=k, reduction=reduction, rank_by=rank_by,
                   temperature=2.5, alpha=1.5, beta=0.7, ce_weight=0.3)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=GOLDEN_IDS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-7), (torch.float32, 1e-5)])
def test_released_code_outputs(case, dtype, rtol):
    check_golden(case, lambda *a, **kw: lk.ldrld_loss(*a, backend="torch", **kw), dtype, rtol)


def test_no_target_and_custom_weights():
    student, teacher = random_logits(4, 100, dtype=torch.float64, seed=3)
    assert_matches("torch", student, teacher, k=5, adw_scale=1.0, adw_decay=0.3, adw_offset=0.5,
                   temperature=0.7)


def test_leading_shape():
    student, teacher = random_logits(2, 3, 37, dtype=torch.float64, seed=4)
    target = random_target(2, 3, num_classes=37)
    target[1, 2] = -100
    for reduction in ("mean", "none"):
        assert_matches("torch", student, teacher, target, k=4, reduction=reduction)
    loss = lk.ldrld_loss(student, teacher, target, k=4, reduction="none")
    assert loss.shape == (2, 3) and loss[1, 2] == 0


def test_non_contiguous_inputs():
    student, teacher = random_logits(40, 6, dtype=torch.float64, seed=5)
    student, teacher = student.t(), teacher.t()
    target = random_target(6, num_classes=40)
    assert not student.is_contiguous()
    assert_matches("torch", student, teacher, target, k=7)
    strided_s, strided_t = random_logits(5, 80, dtype=torch.float64, seed=6)
    assert_matches("torch", strided_s[:, ::2], strided_t[:, 1::2], k=3)


def test_mixed_dtypes():
    student, _ = random_logits(3, 1000, dtype=torch.float32, seed=8)
    _, teacher = random_logits(3, 1000, dtype=torch.bfloat16, seed=9)
    assert_matches("torch", student, teacher, random_target(3, num_classes=1000), k=7)
    loss = lk.ldrld_loss(student.requires_grad_(), teacher.requires_grad_(), k=7)
    loss.backward()
    assert loss.dtype == torch.float32
    assert student.grad.dtype == torch.float32 and teacher.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_classes,k", [(37, 3), (1000, 7), (1271, 16)])
def test_low_precision(dtype, num_classes, k):
    student, teacher = random_logits(3, num_classes, dtype=dtype, seed=num_classes)
    target = random_target(3, num_classes=num_classes)
    assert_matches("torch", student, teacher, target, k=k, reduction="none", alpha=10.5, beta=7.0)


def test_all_rows_ignored():
    student, teacher = random_logits(4, 37, dtype=torch.float64)
    student.requires_grad_()
    target = torch.full((4,), -100)
    out = lk.ldrld_loss(student, teacher, target, k=3, return_parts=True)
    assert out.loss.item() == 0.0 and not any(part.isnan().any() for part in out)
    out.loss.backward()
    assert torch.count_nonzero(student.grad) == 0


def test_ignored_rows_get_zero_gradient_even_with_nan():
    student, teacher = random_logits(3, 37, dtype=torch.float64)
    student[1, 4] = math.nan
    student.requires_grad_()
    target = torch.tensor([1, -100, 2])
    loss = lk.ldrld_loss(student, teacher, target, k=3, reduction="none")
    assert loss.isfinite().all() and loss[1] == 0
    loss.sum().backward()
    assert student.grad.isfinite().all() and torch.count_nonzero(student.grad[1]) == 0


def test_ties_follow_smaller_index():
    generator = torch.Generator().manual_seed(11)
    # bfloat16 values on a coarse grid: many exact repeats in every row
    student = (torch.randint(-4, 5, (6, 300), generator=generator) * 0.5).to(torch.bfloat16)
    teacher = (torch.randn(6, 300, generator=generator) * 2).to(torch.bfloat16)
    expected = torch.sort(student.float(), dim=-1, descending=True, stable=True).indices[:, :16]
    assert torch.equal(top_k_indices(student, 16), expected)
    assert_matches("torch", student, teacher, k=16)
    assert_matches("torch", teacher, student, k=7, rank_by="teacher")


def test_neg_inf_padding():
    student, teacher = random_logits(3, 64, dtype=torch.float64, seed=12)
    student[:, 50:] = -math.inf
    teacher[:, 50:] = -math.inf
    assert_matches("torch", student, teacher, random_target(3, num_classes=50), k=7)
    student.requires_grad_()
    teacher.requires_grad_()
    loss = lk.ldrld_loss(student, teacher, random_target(3, num_classes=50), k=7)
    loss.backward()
    assert loss.isfinite()
    for grad in (student.grad, teacher.grad):
        assert grad.isfinite().all() and torch.count_nonzero(grad[:, 50:]) == 0
    expected = lk.ldrld_loss(student[:, :50].detach(), teacher[:, :50].detach(),
                             random_target(3, num_classes=50), k=7)
    torch.testing.assert_close(loss, expected)


def test_nan_propagates():
    student, teacher = random_logits(2, 37, dtype=torch.float64)
    student[0, 5] = math.nan
    loss = lk.ldrld_loss(student, teacher, k=3, reduction="none")
    assert loss[0].isnan() and loss[1].isfinite()
