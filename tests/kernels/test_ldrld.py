"""The LDRLD kernels of whole rows (``kernels.ldrld``) against the float64 reference, loss and
both gradients.

Compiled on a GPU when there is one, under TRITON_INTERPRET=1 on CPU otherwise.
"""

import math

import pytest
import torch

import ldrld_kernels as lk
from ldrld_kernels.kernels import policy
from tests.helpers import (
    DEVICE,
    GOLDEN,
    GOLDEN_IDS,
    assert_matches,
    check_golden,
    half_gradient_problems,
    launch_matches,
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


# ---- The kernel's own code paths, each reached on purpose ------------------------------------

def _launch_matches(student, teacher, target, lanes, **options):
    """The fused launcher with ``lanes`` threads per row against the float64 PyTorch path."""
    launch = policy.fused_launch(student.shape[1], student.element_size(),
                                 teacher.element_size(), lanes=lanes)
    return launch_matches(student, teacher, target, launch, **options)


@pytest.mark.parametrize("lanes", [8, 16, 32, 64])
@pytest.mark.parametrize("num_classes", [300, 318, 1000, 1271])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_layout(lanes, num_classes, dtype):
    # rows per program from 16 down to 1, rows over several warps (64 lanes), an even and an
    # odd number of full chunks, tail chunks, rows not 16-byte aligned (318, 1271: shifted;
    # 318 with 8 lanes: two masked chunks at the end)
    student, teacher = random_logits(3, num_classes, dtype=dtype, seed=lanes + num_classes)
    target = random_target(3, num_classes=num_classes)
    target[1] = -100
    _launch_matches(student, teacher, target, lanes, temperature=2.0)


@pytest.mark.parametrize("num_classes", [5000, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_candidates_per_thread(num_classes, dtype):
    # 256 threads per row keep 2 groups each (the layout of 65,536 classes)
    student, teacher = random_logits(2, num_classes, dtype=dtype, seed=num_classes)
    launch = _launch_matches(student, teacher, random_target(2, num_classes=num_classes), 256)
    assert launch.candidates == 2


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.0, 4.0])
def test_temperatures(temperature):
    # T = 1, 2, 4: the cross-entropy terms from powers of 2^a_u; T = 3: exponentials of their own
    student, teacher = random_logits(2, 500, seed=11)
    _launch_matches(student, teacher, random_target(2, num_classes=500), 16,
                    temperature=temperature, rank_by="teacher")


def _lane_of_group(classes):
    return classes // 8  # bfloat16 groups of 8 classes, group g read by thread g % lanes


@pytest.mark.parametrize("lanes", [8, 32, 256])
def test_exact_selection_when_one_thread_holds_the_top_groups(lanes):
    # all top-k classes in groups read by one thread: its list of best groups overflows and the
    # program redoes the selection exactly
    num_classes = 8 * lanes * 12
    student, teacher = random_logits(2, num_classes, dtype=torch.bfloat16, seed=lanes)
    top = torch.arange(7) * 8 * lanes + 3  # groups 0, lanes, 2 lanes, ...: all thread 0
    assert len({int(g) % lanes for g in _lane_of_group(top)}) == 1
    student[:, top] = torch.linspace(12, 9, 7).to(torch.bfloat16)
    launch = _launch_matches(student, teacher, random_target(2, num_classes=num_classes),
                             lanes)
    assert launch.candidates < 7


@pytest.mark.parametrize("num_classes", [768, 771])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_selection_from_the_certain_winners(num_classes, dtype):
    # programs of 4 rows (8 threads, 5 candidates each): the exact rounds start after the
    # program's fewest certain winners (those strictly above every key off a list) and redo
    # the rest
    lanes, vec = 8, 128 // torch.finfo(dtype).bits  # (16-byte groups)
    period = lanes * vec  # classes apart on one thread
    target = random_target(4, num_classes=num_classes)
    # (planted keys far above the noise, which stays below 12)
    student, teacher = random_logits(4, num_classes, dtype=dtype, seed=31)
    # row 1: the best on thread 1, the next 6 on thread 0: 6 certain
    student[1, vec + 1] = 17.0
    student[1, torch.arange(6) * period + 2] = torch.linspace(16, 14, 6).to(dtype)
    # row 3: 6 groups on thread 0, the last (13, dropped) tied with thread 1's group: 5
    # certain, the tied pop not (thread 0's dropped group has the smaller class)
    student[3, torch.arange(6) * period] = torch.tensor([16, 15.5, 15, 14.5, 14, 13]).to(dtype)
    student[3, period * 5 + vec] = 13.0
    if num_classes % vec:  # (shifted rows: the first and the last chunks masked)
        student[2, -1] = 14.0
    # rounds from rank 5 on (row 3's), the 5th winner as the threshold; rows 0 and 2 random
    launch = _launch_matches(student, teacher, target, lanes)
    assert launch.rows == 4 and launch.candidates == 5 and launch.vec == vec
    # row 0: the 7 best groups on thread 0 (5 certain); row 2: 6 equal keys on thread 0 (ties
    # at the dropped key: none certain): rounds from 0
    student[0, torch.arange(7) * period + 3] = torch.linspace(16, 13, 7).to(dtype)
    student[2, torch.arange(6) * period + 5] = 15.0
    _launch_matches(student, teacher, target, lanes)


def test_ties_inside_and_across_groups_and_chunks():
    # coarse values, the row maximum repeated inside a group, across a group boundary (7 | 8),
    # across a chunk boundary (255 | 256 with 32 lanes of 8) and across threads
    generator = torch.Generator().manual_seed(12)
    student = (torch.randint(-6, 4, (3, 1000), generator=generator) * 0.5).to(torch.bfloat16)
    student[:, [2, 5, 7, 8, 255, 256, 511, 900]] = 4.0
    teacher = (torch.randn(3, 1000, generator=generator) * 2).to(torch.bfloat16)
    for lanes in (8, 32):
        for k in (3, 7, 16):
            _launch_matches(student, teacher, None, lanes, k=k)
        _launch_matches(teacher, student, None, lanes, k=7, rank_by="teacher")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_half_gradients_under_grad_scaler(reduction):
    # stored as (q - p) / N in float16 before the upstream gradient arrived: 14 zeros where
    # the float64 gradient rounded to float16 has none, in each gradient ("sum": 2)
    student, teacher = random_logits(16, 2048, dtype=torch.float16, scale=2.0)
    target = random_target(16, num_classes=2048)

    def loss_of(s, t, backend):
        return lk.ldrld_loss(s.to(DEVICE), t.to(DEVICE), target.to(DEVICE),
                             reduction=reduction, backend=backend)

    assert half_gradient_problems(loss_of, student.to(DEVICE), teacher.to(DEVICE), reduction,
                                  "triton") == []
