"""Rows wider than ``policy.MAX_FUSED`` (each row split over several programs, rows in waves)
against the float64 reference.

Compiled on a GPU when there is one, under TRITON_INTERPRET=1 on CPU otherwise.
``_split_matches`` launches the wide-row path itself at small sizes (8 threads per row,
chunks of 32 or 64 classes), so that several splits per row, waves of rows and every
boundary are reached in moments; ``helpers.wide_rows`` sends public calls the same way.
"""

import math

import pytest
import torch

import ldrld_kernels as lk
from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels import hardware, launcher, policy
from ldrld_kernels.pytorch import vectorized
from tests.helpers import (
    DEVICE,
    assert_matches,
    half_gradient_problems,
    launch_matches,
    random_logits,
    random_target,
    requires_triton,
    wide_rows,
)

pytestmark = requires_triton


def _split_matches(student, teacher, target, splits, wave_rows, **options):
    launch = policy.split_launch(student.shape[0], student.shape[1], student.element_size(),
                                 teacher.element_size(), hardware.INTERPRETER, lanes=8,
                                 splits=splits, wave_rows=wave_rows)
    return launch_matches(student, teacher, target, launch, **options)


@pytest.mark.parametrize("splits", [1, 2, 3, 7])
@pytest.mark.parametrize("num_classes", [300, 318, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_split_layout(splits, num_classes, dtype):
    # 5 rows in waves of 2, 2 and 1; splits of whole chunks, the last one shorter; rows not
    # 16-byte aligned (318: the first chunk and the partial groups at both ends masked)
    student, teacher = random_logits(5, num_classes, dtype=dtype, seed=splits + num_classes)
    target = random_target(5, num_classes=num_classes)
    target[3] = -100
    launch = _split_matches(student, teacher, target, splits, 2, temperature=2.0)
    assert launch.wave_rows == 2 and launch.split_chunks > 0


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_rank_by_teacher_and_temperatures(temperature):
    student, teacher = random_logits(3, 777, seed=3)
    _split_matches(student, teacher, random_target(3, num_classes=777), 3, 3,
                   temperature=temperature, rank_by="teacher", k=16)


def test_ties_straddling_split_boundaries():
    # coarse bfloat16 values, many exact repeats; the row maximum repeated across chunk (63 |
    # 64) and split (127 | 128, 255 | 256) boundaries: ties go to the smaller class
    generator = torch.Generator().manual_seed(5)
    student = (torch.randint(-6, 4, (2, 1000), generator=generator) * 0.5).to(torch.bfloat16)
    student[:, [63, 64, 127, 128, 255, 256, 900]] = 4.0
    teacher = (torch.randn(2, 1000, generator=generator) * 2).to(torch.bfloat16)
    for k in (3, 16):
        launch = _split_matches(student, teacher, None, 8, 2, k=k)
        assert launch.split_chunks * launch.lanes * launch.vec == 128


def test_one_split_holds_all_the_top_k():
    student, teacher = random_logits(2, 1000, seed=6)
    student[:, 400:407] += 20.0  # all in the second of four splits of 256 classes
    launch = _split_matches(student, teacher, random_target(2, num_classes=1000), 4, 2)
    assert launch.split_chunks * launch.lanes * launch.vec == 256


def test_exact_selection_inside_a_split():
    # the top-k classes in groups read by one thread of one split: its list of best groups
    # overflows and the split redoes its selection exactly
    student, teacher = random_logits(2, 1024, dtype=torch.bfloat16, seed=7)
    top = 512 + torch.arange(7) * 64 + 3  # groups 64, 72, ...: thread 0 of the third split
    student[:, top] = torch.linspace(12, 9, 7).to(torch.bfloat16)
    _split_matches(student, teacher, random_target(2, num_classes=1024), 4, 2)


def test_row_ending_a_chunk_before_the_last_split():
    # 127 classes in rows of odd stride (shifted): row 0 ends in chunk 3, the last split holds
    # only chunk 4, and row 0's last group holds a selected class and the target; only the
    # split that holds that group may write it (the last split once overwrote both)
    student, teacher = random_logits(4, 127, seed=12)
    target = random_target(4, num_classes=127)
    target[0] = 126
    student[0, 125] = 50.0
    launch = _split_matches(student, teacher, target, 3, 4)
    assert launch.split_chunks * launch.lanes * launch.vec == 64


def test_splits_without_k_finite_keys():
    # teacher padding (-inf) over the second half, ranked by the teacher: the last splits
    # have no finite key, and their classes still count in the student's sums and the
    # cross-entropy (their groups were once all taken for winners and dropped)
    student, teacher = random_logits(2, 1000, seed=13)
    teacher[:, 500:] = -math.inf
    _split_matches(student, teacher, random_target(2, num_classes=500), 8, 2, k=3,
                   rank_by="teacher")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_public_calls_reductions_and_k(reduction):
    student, teacher = random_logits(3, 517, seed=4)
    with wide_rows():
        for k in (2, 3, 16):
            assert_matches("triton", student, teacher, k=k, reduction=reduction)


def test_ignored_rows_and_teacher_gradient():
    student, teacher = random_logits(3, 700, dtype=torch.bfloat16, seed=9)
    target = torch.tensor([-100, 4, -100])
    with wide_rows():
        assert_matches("triton", student, teacher, target, k=7, teacher_grad=True)
        student = student.to(DEVICE).requires_grad_()
        teacher = teacher.to(DEVICE).requires_grad_()
        lk.ldrld_loss(student, teacher, target.to(DEVICE), k=7, backend="triton").backward()
    assert torch.count_nonzero(student.grad[[0, 2]]) == 0
    assert torch.count_nonzero(teacher.grad[[0, 2]]) == 0


def test_neg_inf_padding_and_nan():
    student, teacher = random_logits(2, 600, seed=10)
    student[:, 450:] = -math.inf
    teacher[:, 450:] = -math.inf
    with wide_rows():
        assert_matches("triton", student, teacher, k=7)
        student[1, 20] = math.nan
        loss = lk.ldrld_loss(student.to(DEVICE), teacher.to(DEVICE), k=7, backend="triton",
                             reduction="none")
    assert loss[0].isfinite() and loss[1].isnan()


def test_non_contiguous():
    student, teacher = random_logits(300, 4, seed=11)
    with wide_rows():
        assert_matches("triton", student.t(), teacher.t(), k=7)


@pytest.mark.parametrize("k,dtype", [(7, torch.float32), (16, torch.bfloat16)])
def test_rows_of_70001_with_the_policy(k, dtype):
    student, teacher = random_logits(2, 70001, dtype=dtype, seed=k)
    target = random_target(2, num_classes=70001)
    assert_matches("triton", student, teacher, target, k=k, reduction="none", alpha=10.5,
                   beta=7.0)


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
    loss, parts, grad, _ = launcher.ldrld_rows(student, teacher, None, config, True, False)
    sampled = torch.tensor([0, 1, rows // 2, rows - 2, rows - 1], device="cuda")
    expected, expected_parts, expected_grad, _ = vectorized.ldrld_rows(
        student[sampled], teacher[sampled], None, config, True, False)
    torch.testing.assert_close(loss[sampled], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts[sampled], expected_parts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad[sampled].float(), expected_grad.float(), rtol=1.6e-2,
                               atol=1e-4)


def test_half_gradients_under_grad_scaler():
    # stored as (q - p) / N in float16 before the upstream gradient arrived: zeros where the
    # float64 gradient rounded to float16 has none
    student, teacher = random_logits(4, 1100, dtype=torch.float16, scale=3.0, seed=9)
    target = random_target(4, num_classes=1100)

    def loss_of(s, t, backend):
        return lk.ldrld_loss(s, t, target.to(DEVICE), backend=backend)

    with wide_rows(max_fused=256, l2_bytes=8192):
        assert half_gradient_problems(loss_of, student.to(DEVICE), teacher.to(DEVICE),
                                      "mean", "triton") == []
