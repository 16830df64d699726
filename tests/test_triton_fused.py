"""The fused Triton kernel against the float64 reference, loss and both gradients.

Compiled on a GPU when there is one, under TRITON_INTERPRET=1 on CPU otherwise.
"""

import math

import pytest
import torch

import ldrld_kernels as lk
from tests.helpers import (
    DEVICE,
    GOLDEN,
    GOLDEN_IDS,
    assert_matches,
    check_golden,
    random_logits,
    random_target,
    requires_triton,
)

pytestmark = requires_triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CASES = [(C, k) for C in (37, 1000, 1271) for k in (2, 3, 7, 16)]


def triton_loss(*args, **kwargs):
    return lk.ldrld_loss(*args, backend="triton", **kwargs)


@pytest.mark.parametrize("num_classes,k", CASES)
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(num_classes, k, rows, dtype):
    student, teacher = random_logits(rows, num_classes, dtype=dtype, seed=num_classes * k)
    target = random_target(rows, num_classes=num_classes)
    assert_matches("triton", student, teacher, target, k=k, reduction="none", alpha=10.5, beta=7.0,
                   temperature=4.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("rank_by", ["student", "teacher"])
def test_reductions_rank_by_and_ignored_rows(reduction, rank_by):
    student, teacher = random_logits(3, 300, seed=21)
    target = torch.tensor([5, -100, 17])
    assert_matches("triton", student, teacher, target, k=7, reduction=reduction, rank_by=rank_by,
                   temperature=2.0, ce_weight=0.5, adw_scale=1.0, adw_decay=0.2,
                   adw_offset=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_full_row_of_16384(dtype):
    student, teacher = random_logits(1, 16384, dtype=dtype, seed=3)
    assert_matches("triton", student, teacher, random_target(1, num_classes=16384), k=16)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=GOLDEN_IDS)
def test_released_code_outputs(case):
    check_golden(case, triton_loss, torch.float32, rtol=1e-5, device=DEVICE)


def test_no_target():
    student, teacher = random_logits(3, 100, seed=5)
    assert_matches("triton", student, teacher, k=5)


def test_leading_shape():
    student, teacher = random_logits(2, 3, 37, seed=6)
    target = random_target(2, 3, num_classes=37)
    target[0, 1] = -100
    assert_matches("triton", student, teacher, target, k=4, reduction="none")
    assert_matches("triton", student, teacher, target, k=4)


def test_non_contiguous_inputs():
    student, teacher = random_logits(40, 6, seed=7)
    assert_matches("triton", student.t(), teacher.t(), random_target(6, num_classes=40), k=7)
    student, teacher = random_logits(3, 160, dtype=torch.bfloat16, seed=8)
    assert_matches("triton", student[:, ::2], teacher[:, 1::2], k=3)


def test_mixed_dtypes():
    student, _ = random_logits(3, 1000, dtype=torch.float32, seed=9)
    _, teacher = random_logits(3, 1000, dtype=torch.bfloat16, seed=10)
    assert_matches("triton", student, teacher, random_target(3, num_classes=1000), k=7)


def test_all_rows_ignored():
    student, teacher = random_logits(2, 37)
    student = student.to(DEVICE).requires_grad_()
    out = triton_loss(student, teacher.to(DEVICE), torch.full((2,), -100, device=DEVICE),
                      k=3, return_parts=True)
    assert out.loss.item() == 0.0 and not any(part.isnan().any() for part in out)
    out.loss.backward()
    assert torch.count_nonzero(student.grad) == 0


def test_bfloat16_ties():
    generator = torch.Generator().manual_seed(11)
    student = (torch.randint(-4, 5, (3, 300), generator=generator) * 0.5).to(torch.bfloat16)
    teacher = (torch.randn(3, 300, generator=generator) * 2).to(torch.bfloat16)
    assert_matches("triton", student, teacher, k=16)
    assert_matches("triton", teacher, student, k=7, rank_by="teacher")


def test_neg_inf_padding():
    student, teacher = random_logits(3, 64, seed=12)
    student[:, 50:] = -math.inf
    teacher[:, 50:] = -math.inf
    target = random_target(3, num_classes=50)
    assert_matches("triton", student, teacher, target, k=7)
    student = student.to(DEVICE).requires_grad_()
    teacher = teacher.to(DEVICE).requires_grad_()
    loss = triton_loss(student, teacher, target.to(DEVICE), k=7)
    loss.backward()
    assert loss.isfinite()
    for grad in (student.grad, teacher.grad):
        assert grad.isfinite().all() and torch.count_nonzero(grad[:, 50:]) == 0


def test_nan_stays_in_its_row():
    student, teacher = random_logits(2, 37)
    student[0, 5] = math.nan
    loss = triton_loss(student.to(DEVICE), teacher.to(DEVICE), k=3, reduction="none")
    assert loss[0].isnan() and loss[1].isfinite()


def test_auto_takes_triton_only_on_cuda():
    student, teacher = random_logits(2, 37)
    expected = "triton" if DEVICE == "cuda" else "torch"
    assert lk.api.resolve_backend("auto", student.to(DEVICE), teacher.to(DEVICE)) == expected
