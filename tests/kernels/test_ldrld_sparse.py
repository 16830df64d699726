"""The LDRLD kernels against a sparse teacher (``launcher.ldrld_sparse_rows``): every layout of
whole and wide rows, the exact-selection fallback, and what the call allocates.

Compiled on a GPU when there is one, under TRITON_INTERPRET=1 on CPU otherwise. The launcher
runs against the PyTorch rows in float64 (``sparse_rows``, itself checked against the
reference on the completed rows in ``tests/test_sparse.py``).
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ldrld_kernels as lk
from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels import hardware, launcher, policy, trips
from ldrld_kernels.pytorch import sparse_rows
from ldrld_kernels.tools.check import GRAD_TOLERANCES
from tests.helpers import (
    DEVICE,
    assert_matches,
    random_logits,
    random_target,
    requires_triton,
    wide_rows,
)

pytestmark = requires_triton


def _top(teacher: torch.Tensor, listed: int) -> lk.SparseTeacher:
    return lk.SparseTeacher.from_logits(teacher, listed)


def _launch_matches(student, top, target, launch, **options):
    """``launcher.ldrld_sparse_rows`` with ``launch`` against the PyTorch rows in float64:
    row losses, parts and the student's gradient, under a mean's scale."""
    config = LossConfig(**{"k": 7, **options})
    rows, parts, grad = launcher.ldrld_sparse_rows(
        student.to(DEVICE), top.ids.to(DEVICE), top.logprobs.to(DEVICE),
        None if target is None else target.to(DEVICE), config, True,
        torch.tensor(0.25, device=DEVICE), launch=launch)
    expected = sparse_rows.ldrld_sparse_rows(
        student.double(), lk.SparseTeacher(top.ids, top.logprobs.double()), target, config,
        True, False, torch.tensor(0.25, dtype=torch.float64))
    for actual, wanted in zip((rows, parts), expected[:2], strict=True):
        scale = max(1.0, float(wanted.abs().max()))
        torch.testing.assert_close(actual.cpu().double(), wanted, rtol=1e-5, atol=2e-6 * scale)
    tol = GRAD_TOLERANCES[student.dtype]
    scale = max(1.0, float(expected[2].abs().max()))
    torch.testing.assert_close(grad.cpu().double(), expected[2], rtol=tol.rtol,
                               atol=tol.atol * scale + 1e-7)
    return launch


@pytest.mark.parametrize("lanes", [8, 16, 32])
@pytest.mark.parametrize("num_classes,listed", [(300, 7), (318, 64), (1000, 100)])
@pytest.mark.parametrize("rank_by", ["student", "teacher"])
def test_every_whole_row_layout(lanes, num_classes, listed, rank_by):
    # rows of several programs' layouts; 318: rows not 16-byte aligned (shifted)
    student, teacher = random_logits(5, num_classes, seed=lanes + num_classes)
    target = random_target(5, num_classes=num_classes)
    target[3] = -100
    launch = policy.fused_launch(num_classes, student.element_size(), 0, lanes=lanes)
    _launch_matches(student, _top(teacher, listed), target, launch, rank_by=rank_by,
                    temperature=2.0)


@pytest.mark.parametrize("splits", [1, 3, 7])
@pytest.mark.parametrize("num_classes", [300, 318, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_split_layout(splits, num_classes, dtype):
    # 5 rows in waves of 2, 2 and 1, several splits of whole chunks each
    student, teacher = random_logits(5, num_classes, dtype=dtype, seed=splits + num_classes)
    target = random_target(5, num_classes=num_classes)
    target[3] = -100
    target[1] = _top(teacher, 40).ids[1, 5]  # a listed target
    for rank_by in ("student", "teacher"):
        launch = policy.split_launch(5, num_classes, student.element_size(), 0,
                                     hardware.INTERPRETER, lanes=8, splits=splits, wave_rows=2)
        _launch_matches(student, _top(teacher, 40), target, launch, rank_by=rank_by)
        assert launch.wave_rows == 2 and launch.split_chunks > 0


@pytest.mark.parametrize("listed", [16, 64, 777])
def test_public_calls_on_wide_rows(listed):
    # (K = k = 16; K = C: every class listed, the dense teacher)
    student, teacher = random_logits(3, 777, seed=listed)
    target = random_target(3, num_classes=777)
    target[0] = -100
    with wide_rows():
        for rank_by in ("student", "teacher"):
            assert_matches("triton", student, _top(teacher, listed), target, k=16,
                           rank_by=rank_by, temperature=3.0)
            assert_matches("triton", student, _top(teacher, listed), None, k=7,
                           rank_by=rank_by, reduction="sum")


@pytest.mark.parametrize("wide", [False, True])
def test_exact_selection_fallback(wide):
    # the best groups all on one thread (spaced LANES x VEC apart): its list overflows, every
    # program falls back to the exact rounds, and one round more gives each thread's best
    # class outside the winners (the statistics' fixed offsets)
    lanes, vec = 8, 4
    student, teacher = random_logits(3, 640, seed=12)
    student[:, ::lanes * vec] += 8.0
    student[1, ::lanes * vec] += torch.linspace(0, 40, 20)  # offsets far apart
    if wide:
        launch = policy.split_launch(3, 640, 4, 0, hardware.INTERPRETER, lanes=lanes, splits=2,
                                     wave_rows=2)
    else:
        launch = policy.fused_launch(640, 4, 0, lanes=lanes)
    runs, _ = trips.fallback(student[:, :640 // (2 if wide else 1)].float(), 7, lanes, vec,
                             launch.candidates, 1)
    assert runs == 1.0  # (every row: in the first split, for wide rows)
    _launch_matches(student, _top(teacher, 50), random_target(3, num_classes=640), launch)


class _LargeTensors(TorchDispatchMode):
    """The new tensors (storage that no input of their operator has) of ``size`` elements or
    more that the operators dispatched inside make: (operator, dtype)."""

    def __init__(self, size: int):
        super().__init__()
        self.size, self.made = size, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {x.untyped_storage().data_ptr()
                 for x in torch.utils._pytree.tree_leaves((args, kwargs))
                 if isinstance(x, torch.Tensor)}
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if (isinstance(tensor, torch.Tensor) and tensor.numel() >= self.size
                    and tensor.untyped_storage().data_ptr() not in given):
                self.made.append((str(func), tensor.dtype))
        return out


@pytest.mark.parametrize("rank_by", ["student", "teacher"])
@pytest.mark.parametrize("num_classes", [3000, 70001])  # whole rows, wide rows
def test_nothing_of_the_rows_size_but_the_students_gradient(rank_by, num_classes):
    # a training step makes one tensor of rows x C elements or more, the student's gradient
    # (no teacher row, no float64 temporaries): the custom op's output, and inside it one
    # allocation
    rows = 2
    student, teacher = random_logits(rows, num_classes, seed=13)
    student = student.to(DEVICE).requires_grad_()
    top = lk.SparseTeacher(*(x.to(DEVICE) for x in _top(teacher, 64)))
    target = random_target(rows, num_classes=num_classes).to(DEVICE)
    with _LargeTensors(rows * num_classes) as step:
        lk.ldrld_loss(student, top, target, backend="triton", rank_by=rank_by).backward()
    assert step.made == [("ldrld_kernels.ldrld_sparse_rows.default", torch.float32)]
    with _LargeTensors(rows * num_classes) as launch:
        launcher.ldrld_sparse_rows(student.detach(), *top, target,
                                   LossConfig(rank_by=rank_by), True)
    assert launch.made == [("aten.new_empty.default", torch.float32)]
