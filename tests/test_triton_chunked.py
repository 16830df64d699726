"""The chunked Triton kernels (rows wider than MAX_FUSED) against the float64 reference.

Compiled on a GPU when there is one, under TRITON_INTERPRET=1 on CPU otherwise. The
``small_chunks`` cases shrink the chunk width and the fused limit so that many chunks and
several ranges per row are exercised at sizes the interpreter runs in moments.
"""

import math

import pytest
import torch

import ldrld_kernels as lk
from ldrld_kernels import policy, torch_path, triton_chunked, triton_fused
from ldrld_kernels.config import LossConfig
from tests.helpers import DEVICE, assert_matches, random_logits, random_target, requires_triton

pytestmark = requires_triton


@pytest.fixture
def small_chunks(monkeypatch):
    """Rows past 64 classes go to the chunked kernels, in chunks of 128, ranges of up to
    ``programs / rows`` per row."""

    def configure(programs=1):
        monkeypatch.setattr(policy, "MAX_FUSED", 64)
        monkeypatch.setattr(triton_chunked, "BLOCK_C", 128)
        monkeypatch.setattr(triton_chunked, "_programs_to_fill", lambda device: programs)

    return configure


@pytest.mark.parametrize("num_classes", [16385, 70001])
@pytest.mark.parametrize("k", [7, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_rows(num_classes, k, dtype):
    rows = 2 if num_classes < 20000 else 1
    student, teacher = random_logits(rows, num_classes, dtype=dtype, seed=num_classes + k)
    target = random_target(rows, num_classes=num_classes)
    assert_matches("triton", student, teacher, target, k=k, reduction="none", alpha=10.5, beta=7.0)


@pytest.mark.parametrize("programs", [1, 3, 8])
@pytest.mark.parametrize("rank_by", ["student", "teacher"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_chunks_and_ranges(small_chunks, programs, rank_by, dtype):
    small_chunks(programs)
    student, teacher = random_logits(2, 1000, dtype=dtype, seed=programs)
    target = torch.tensor([3, -100])
    assert_matches("triton", student, teacher, target, k=7, rank_by=rank_by, temperature=2.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_no_target_and_k(small_chunks, reduction):
    small_chunks(4)
    student, teacher = random_logits(3, 517, seed=4)
    for k in (2, 3, 16):
        assert_matches("triton", student, teacher, k=k, reduction=reduction)


def test_ties_straddling_chunk_and_range_boundaries(small_chunks):
    small_chunks(4)
    generator = torch.Generator().manual_seed(5)
    # coarse bfloat16 values: many exact repeats; the row maximum repeated across a chunk
    # boundary (127 | 128) and a range boundary (255 | 256)
    student = (torch.randint(-6, 4, (2, 1000), generator=generator) * 0.5).to(torch.bfloat16)
    student[:, [127, 128, 255, 256, 900]] = 4.0
    teacher = (torch.randn(2, 1000, generator=generator) * 2).to(torch.bfloat16)
    assert_matches("triton", student, teacher, k=16)
    assert_matches("triton", student, teacher, k=3)


def test_ties_straddling_a_default_chunk_boundary():
    generator = torch.Generator().manual_seed(6)
    student = (torch.randint(-6, 4, (1, 20000), generator=generator) * 0.5).to(torch.bfloat16)
    boundary = triton_chunked.BLOCK_C
    student[0, [boundary - 2, boundary - 1, boundary, boundary + 1]] = 4.0
    teacher = (torch.randn(1, 20000, generator=generator) * 2).to(torch.bfloat16)
    assert_matches("triton", student, teacher, k=3)
    assert_matches("triton", student, teacher, k=7)


def test_top_k_all_in_the_last_chunk():
    student, teacher = random_logits(2, 20000, seed=7)
    student[:, -9:] += 20.0
    assert_matches("triton", student, teacher, random_target(2, num_classes=20000), k=7)


def test_top_k_holding_nearly_all_the_teacher_mass():
    # T = 1 and +30 on the selected classes: the other 70,000 classes hold ~1e-8 of the
    # teacher's mass, the case where subtracting the top-k from a full-row sum cancels.
    student, teacher = random_logits(1, 70001, seed=8, scale=1.0)
    top = torch.tensor([5, 17000, 40000, 70000, 33, 8191, 65536])
    student[:, top] += 30.0
    teacher[:, top] += 30.0
    top_mass = torch.softmax(teacher.double(), dim=-1)[:, top].sum()
    assert top_mass > 1 - 1e-6
    assert_matches("triton", student, teacher, torch.tensor([9]), k=7, temperature=1.0)


def test_ignored_rows_and_teacher_gradient(small_chunks):
    small_chunks(2)
    student, teacher = random_logits(3, 700, dtype=torch.bfloat16, seed=9)
    target = torch.tensor([-100, 4, -100])
    assert_matches("triton", student, teacher, target, k=7, teacher_grad=True)
    student = student.to(DEVICE).requires_grad_()
    teacher = teacher.to(DEVICE).requires_grad_()
    lk.ldrld_loss(student, teacher, target.to(DEVICE), k=7, backend="triton").backward()
    assert torch.count_nonzero(student.grad[[0, 2]]) == 0
    assert torch.count_nonzero(teacher.grad[[0, 2]]) == 0


def test_neg_inf_padding_and_nan(small_chunks):
    small_chunks(3)
    student, teacher = random_logits(2, 600, seed=10)
    student[:, 450:] = -math.inf
    teacher[:, 450:] = -math.inf
    assert_matches("triton", student, teacher, k=7)
    student[1, 20] = math.nan
    loss = lk.ldrld_loss(student.to(DEVICE), teacher.to(DEVICE), k=7, backend="triton",
                         reduction="none")
    assert loss[0].isfinite() and loss[1].isnan()


def test_non_contiguous(small_chunks):
    small_chunks(2)
    student, teacher = random_logits(300, 4, seed=11)
    assert_matches("triton", student.t(), teacher.t(), k=7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_more_than_2_31_elements_on_gpu():
    rows, num_classes = 32768, 131072
    generator = torch.Generator(device="cuda").manual_seed(12)
    student = torch.randn(rows, num_classes, device="cuda", dtype=torch.bfloat16,
                          generator=generator)
    teacher = torch.randn(rows, num_classes, device="cuda", dtype=torch.bfloat16,
                          generator=generator)
    assert student.numel() > 2**31
    config = LossConfig(k=7)
    loss, parts, grad, _ = triton_fused.ldrld_rows(student, teacher, None, config, True, False)
    sampled = torch.tensor([0, 1, rows // 2, rows - 2, rows - 1], device="cuda")
    expected, expected_parts, expected_grad, _ = torch_path.ldrld_rows(
        student[sampled], teacher[sampled], None, config, True, False)
    torch.testing.assert_close(loss[sampled], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts[sampled], expected_parts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad[sampled].float(), expected_grad.float(), rtol=1.6e-2,
                               atol=1e-4)
