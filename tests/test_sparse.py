"""A sparse teacher (``SparseTeacher``: its top-K ids and log-probabilities): the completion
rule, the converters, bad input, and every path of ``ldrld_loss`` against the reference on the
completed rows (``reference.densify``), gradients included.

The Triton kernels run compiled on a GPU, else under the interpreter; their wide rows and the
exact-selection fallback are in ``tests/kernels/test_ldrld_sparse.py``, the vocabulary-parallel
path in ``tests/pytorch/test_parallel.py`` and the fused-linear loss in
``tests/test_fused_linear.py``.
"""

import math
import types

import pytest
import torch

import ldrld_kernels as lk
from ldrld_kernels import reference
from ldrld_kernels.sparse import TINY, tail_logprob
from tests.helpers import (
    DEVICE,
    assert_matches,
    random_logits,
    random_target,
    requires_triton,
    to_device,
)

BACKENDS = ["torch", pytest.param("triton", marks=requires_triton)]


def sparse(teacher: torch.Tensor, listed: int, dtype=None) -> lk.SparseTeacher:
    """The top ``listed`` of ``teacher`` (logits) as a sparse teacher, its log-probabilities
    in ``dtype`` (by default float32, float64 for float64 logits)."""
    ids, logprobs = lk.SparseTeacher.from_logits(teacher, listed)
    return lk.SparseTeacher(ids, logprobs if dtype is None else logprobs.to(dtype))


def dtype_for(backend: str) -> torch.dtype:
    """The PyTorch path in float64 (the issue's 1e-7), the kernels in float32 (1e-5)."""
    return torch.float64 if backend == "torch" else torch.float32


# ---- The completion rule -------------------------------------------------------------------


def test_densify_spreads_the_missing_mass_over_the_unlisted_classes():
    ids = torch.tensor([[4, 0, 2]])
    logprobs = torch.log(torch.tensor([[0.5, 0.2, 0.1]], dtype=torch.float64))
    dense = reference.densify(ids, logprobs, 7)
    assert dense.dtype == torch.float64 and dense.shape == (1, 7)
    torch.testing.assert_close(dense[0, [4, 0, 2]], logprobs[0])
    # m = 0.2 over the 4 unlisted classes
    torch.testing.assert_close(dense[0, [1, 3, 5, 6]], torch.full((4,), math.log(0.05),
                                                                  dtype=torch.float64))
    torch.testing.assert_close(dense.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(tail_logprob(logprobs, 7), torch.tensor([math.log(0.05)],
                                                                       dtype=torch.float64))


def test_missing_mass_is_clamped_at_float32s_smallest_normal_number():
    # listed probabilities that sum to 1 (and a hair past it, within rounding)
    for total in (1.0, 1.0 + 1e-7):
        logprobs = torch.log(torch.tensor([[0.5, 0.5 * total]], dtype=torch.float64))
        dense = reference.densify(torch.tensor([[0, 1]]), logprobs, 5)
        assert torch.isfinite(dense).all()
        torch.testing.assert_close(dense[0, 2:], torch.full((3,), math.log(TINY / 3),
                                                            dtype=torch.float64))


def test_every_class_listed_is_the_teacher_itself():
    _, teacher = random_logits(3, 10, dtype=torch.float64)
    top = sparse(teacher, 10)
    torch.testing.assert_close(reference.densify(*top, 10), teacher.log_softmax(dim=-1))
    assert torch.isneginf(tail_logprob(top.logprobs, 10)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_class_listed_gives_the_dense_loss(backend):
    dtype = dtype_for(backend)
    student, teacher = random_logits(4, 50, dtype=dtype, seed=1)
    target = random_target(4, num_classes=50)
    for rank_by in ("student", "teacher"):
        options = {"k": 7, "rank_by": rank_by, "return_parts": True, "backend": backend}
        dense = lk.ldrld_loss(student.to(DEVICE), teacher.to(DEVICE), target.to(DEVICE),
                              **options)
        got = lk.ldrld_loss(student.to(DEVICE), to_device(sparse(teacher, 50, dtype)),
                            target.to(DEVICE), **options)
        tolerance = 1e-10 if dtype == torch.float64 else 1e-5
        for ours, theirs in zip(got, dense, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)


# ---- Converters ----------------------------------------------------------------------------


def test_from_logits_is_the_top_k_of_the_log_softmax_ties_to_the_smaller_class():
    teacher = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0]])
    top = lk.SparseTeacher.from_logits(teacher, 4)
    assert top.ids.tolist() == [[1, 2, 4, 5]]
    torch.testing.assert_close(top.logprobs, teacher.log_softmax(-1)[:, [1, 2, 4, 5]])
    assert top.ids.dtype == torch.int64 and top.logprobs.dtype == torch.float32
    assert lk.SparseTeacher.from_logits(teacher.double(), 2).logprobs.dtype == torch.float64
    assert lk.SparseTeacher.from_logits(teacher.bfloat16(), 2).logprobs.dtype == torch.float32
    # a leading shape
    assert lk.SparseTeacher.from_logits(torch.randn(2, 3, 9), 5).ids.shape == (2, 3, 5)


def test_from_distillkit_takes_log_probabilities_and_a_signal():
    _, teacher = random_logits(3, 40, dtype=torch.float64)
    top = sparse(teacher, 8)
    converted = lk.SparseTeacher.from_distillkit(sparse_ids=top.ids,
                                                 sparse_values=top.logprobs, log_values=True)
    assert converted.ids is top.ids and converted.logprobs is top.logprobs
    signal = types.SimpleNamespace(sparse_ids=top.ids, sparse_values=top.logprobs,
                                   log_values=True, generation_temperature=1.0)
    assert lk.SparseTeacher.from_distillkit(signal).logprobs is top.logprobs


def test_from_distillkit_raw_logits_need_the_rows_logsumexp():
    _, teacher = random_logits(3, 40, dtype=torch.float64)
    values, ids = teacher.topk(8, dim=-1)
    with pytest.raises(ValueError, match="logsumexp"):
        lk.SparseTeacher.from_distillkit(sparse_ids=ids, sparse_values=values,
                                         log_values=False)
    converted = lk.SparseTeacher.from_distillkit(sparse_ids=ids, sparse_values=values,
                                                 log_values=False,
                                                 logsumexp=teacher.logsumexp(dim=-1))
    torch.testing.assert_close(converted.logprobs, teacher.log_softmax(-1).gather(-1, ids))


def test_from_distillkit_refuses_what_is_not_convertible():
    ids, values = torch.tensor([[0, 1]]), torch.tensor([[-1.0, -2.0]])
    with pytest.raises(ValueError, match="generation_temperature=2"):
        lk.SparseTeacher.from_distillkit(sparse_ids=ids, sparse_values=values, log_values=True,
                                         generation_temperature=2.0)
    with pytest.raises(TypeError, match="sparse_ids, sparse_values and log_values"):
        lk.SparseTeacher.from_distillkit(sparse_ids=ids, sparse_values=values)


# ---- Bad input -----------------------------------------------------------------------------


def _bad(**changes):
    student, teacher = random_logits(2, 3, 20)
    top = sparse(teacher, 8)
    ids, logprobs = changes.pop("ids", top.ids), changes.pop("logprobs", top.logprobs)
    return student, lk.SparseTeacher(ids, logprobs), changes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("error,match,change", [
    (TypeError, "teacher.ids .*int64", lambda t: {"ids": t.ids.float()}),
    (TypeError, "teacher.logprobs .*float32, float16, bfloat16 or float64",
     lambda t: {"logprobs": t.logprobs.long()}),
    (TypeError, "teacher.logprobs .*must not require grad",
     lambda t: {"logprobs": t.logprobs.clone().requires_grad_()}),
    (ValueError, "same shape", lambda t: {"logprobs": t.logprobs[..., :7]}),
    (ValueError, "leading shape", lambda t: {"ids": t.ids[:1], "logprobs": t.logprobs[:1]}),
    (ValueError, "at least k classes", lambda t: {"ids": t.ids[..., :6],
                                                  "logprobs": t.logprobs[..., :6]}),
    (ValueError, r"ids must lie in \[0, 20\)", lambda t: {"ids": t.ids.clone().fill_(20)}),
    (ValueError, "distinct", lambda t: {"ids": t.ids.clone().fill_(3)}),
    (ValueError, "sum to at most 1", lambda t: {"logprobs": t.logprobs + 0.5}),
])
def test_bad_sparse_teacher_names_the_argument(backend, error, match, change):
    student, teacher = random_logits(2, 3, 20)
    top = sparse(teacher, 8)
    bad = top._replace(**change(top))
    with pytest.raises(error, match=match):
        lk.ldrld_loss(student.to(DEVICE), to_device(bad), backend=backend)


def test_more_classes_listed_than_the_row_has():
    student, _ = random_logits(2, 20)
    top = lk.SparseTeacher(torch.arange(21).expand(2, 21), torch.full((2, 21), -5.0))
    with pytest.raises(ValueError, match="at most C classes .*K=21 with C=20"):
        lk.ldrld_loss(student, top)


def test_rounding_past_one_is_accepted():
    # a float32 top-K of a peaked row: its probabilities may sum to 1 plus rounding
    student, _ = random_logits(1, 20)
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]], dtype=torch.float64))
    logprobs = (logprobs + 1e-7).float()
    assert logprobs.double().exp().sum() > 1
    lk.ldrld_loss(student, lk.SparseTeacher(torch.tensor([[0, 1, 2, 3]]), logprobs), k=3)


# ---- Every path against the completed rows ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("listed", [7, 30, 300])  # K = k, between, C
@pytest.mark.parametrize("rank_by", ["student", "teacher"])
def test_matches_the_completed_teacher(backend, listed, rank_by):
    dtype = dtype_for(backend)
    student, teacher = random_logits(5, 300, dtype=dtype, seed=listed)
    target = random_target(5, num_classes=300)
    target[1] = -100
    target[2] = sparse(teacher, listed).ids[2, 1]  # a listed target
    assert_matches(backend, student, sparse(teacher, listed, dtype), target, k=7,
                   rank_by=rank_by, reduction="none", alpha=2.5, beta=3.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_parts_and_ignored_rows(backend, reduction):
    dtype = dtype_for(backend)
    student, teacher = random_logits(4, 100, dtype=dtype, seed=3)
    top = sparse(teacher, 20, dtype)
    target = torch.tensor([5, -100, 17, -100])
    options = {"k": 5, "reduction": reduction, "temperature": 2.0, "ce_weight": 0.5}
    assert_matches(backend, student, top, target, **options)
    got = lk.ldrld_loss(student.to(DEVICE), to_device(top), target.to(DEVICE),
                        return_parts=True, backend=backend, **options)
    expected = reference.ldrld_loss(student.double(), reference.densify(*top, 100), target,
                                    return_parts=True, **options)
    tolerance = 1e-9 if dtype == torch.float64 else 1e-5
    for ours, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(ours.cpu().double(), theirs, rtol=tolerance,
                                   atol=tolerance * max(1.0, float(theirs.abs().max())))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mass", ["near 0", "near 1"])
def test_tail_mass_near_0_and_near_1(backend, mass):
    dtype = dtype_for(backend)
    student, teacher = random_logits(3, 200, dtype=torch.float64, seed=4)
    if mass == "near 0":  # the listed classes hold all but ~1e-12 of the mass
        teacher[:, :16] += 40.0
    else:  # the listed classes hold ~1e-9 of the mass
        teacher[:, :16] -= 30.0
        teacher[:, 16:] += 0.0
    ids = torch.arange(16).expand(3, 16)
    logprobs = teacher.log_softmax(-1)[:, :16]
    top = lk.SparseTeacher(ids, logprobs.to(dtype))
    remaining = 1 - logprobs.exp().sum(-1)
    assert (remaining < 1e-10).all() if mass == "near 0" else (remaining > 1 - 1e-8).all()
    for rank_by in ("student", "teacher"):
        assert_matches(backend, student.to(dtype), top, random_target(3, num_classes=200),
                       k=7, rank_by=rank_by)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["inside", "partly inside", "outside"])
def test_student_top_k_inside_partly_inside_and_outside_the_listed(backend, where):
    dtype = dtype_for(backend)
    student, teacher = random_logits(3, 120, dtype=torch.float64, seed=5)
    top = sparse(teacher, 24)
    listed = top.ids[:, :7]
    unlisted = torch.stack([torch.tensor([c for c in range(120) if c not in row][:7])
                            for row in top.ids.tolist()])
    chosen = {"inside": listed, "outside": unlisted,
              "partly inside": torch.cat([listed[:, :3], unlisted[:, :4]], dim=1)}[where]
    student.scatter_add_(1, chosen, torch.full(chosen.shape, 12.0, dtype=torch.float64))
    assert_matches(backend, student.to(dtype), sparse(teacher, 24, dtype),
                   random_target(3, num_classes=120), k=7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties(backend):
    dtype = dtype_for(backend)
    student, teacher = random_logits(3, 64, dtype=torch.float64, seed=6)
    student[0, 10:30] = 5.0  # the student's top-k among equal logits
    student[1] = 1.0  # a whole row equal
    teacher[2, :20] = 4.0  # the teacher's ranking among equal listed values
    top = sparse(teacher, 16, dtype)
    # a listed value equal to the tail: the unlisted classes tie with a listed one
    logprobs = top.logprobs.clone()
    logprobs[0, -1] = tail_logprob(logprobs[:1], 64).to(dtype)[0]
    ties = lk.SparseTeacher(top.ids, logprobs)
    for rank_by in ("student", "teacher"):
        assert_matches(backend, student.to(dtype), ties, random_target(3, num_classes=64),
                       k=7, rank_by=rank_by)


@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_ranking_reaches_the_unlisted_classes(backend):
    # K = k = 7 listed, but the listed ones hold little mass: the unlisted classes (at the
    # tail, ties to the smaller class) rank above some of them
    dtype = dtype_for(backend)
    student, _ = random_logits(2, 50, dtype=dtype, seed=7)
    ids = torch.tensor([[3, 9, 17, 20, 33, 40, 49], [0, 1, 2, 3, 4, 5, 6]])
    logprobs = torch.tensor([[-1.0, -1.5, -2.0, -9.0, -9.5, -10.0, -11.0]] * 2, dtype=dtype)
    assert_matches(backend, student, lk.SparseTeacher(ids, logprobs),
                   torch.tensor([0, 8]), k=7, rank_by="teacher")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_target_leading_shape_and_temperature(backend):
    dtype = dtype_for(backend)
    student, teacher = random_logits(2, 3, 90, dtype=dtype, seed=8)
    top = sparse(teacher, 12, dtype)
    assert top.ids.shape == (2, 3, 12)
    assert_matches(backend, student, top, k=4, temperature=3.0)
    target = random_target(2, 3, num_classes=90)
    target[0, 1] = -100
    assert_matches(backend, student, top, target, k=4, temperature=1.0, reduction="none",
                   adw_scale=1.0, adw_decay=0.2, adw_offset=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits(backend):
    # far-apart logits: the k best ~1e4 above the rest, and rows of steep ramps (each
    # thread's classes far from the others')
    dtype = dtype_for(backend)
    student, teacher = random_logits(3, 400, dtype=torch.float64, seed=9)
    student[0, 100:107] += 1e4
    student[1] = torch.linspace(-3e3, 3e3, 400, dtype=torch.float64)
    student[2] = -torch.linspace(-3e3, 3e3, 400, dtype=torch.float64)
    for T in (1.0, 4.0):
        assert_matches(backend, student.to(dtype), sparse(teacher, 32, dtype),
                       random_target(3, num_classes=400), k=7, temperature=T)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_student(dtype):
    student, teacher = random_logits(3, 500, dtype=dtype, seed=10)
    assert_matches("triton", student, sparse(teacher, 40), random_target(3, num_classes=500),
                   k=7)
    # log-probabilities stored in bfloat16
    assert_matches("triton", student, sparse(teacher, 40, torch.bfloat16),
                   random_target(3, num_classes=500), k=7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_module_takes_a_sparse_teacher(backend):
    dtype = dtype_for(backend)
    student, teacher = random_logits(4, 60, dtype=dtype, seed=11)
    top = to_device(sparse(teacher, 10, dtype))
    module = lk.LDRLDLoss(k=5, backend=backend)
    torch.testing.assert_close(module(student.to(DEVICE), top),
                               lk.ldrld_loss(student.to(DEVICE), top, k=5, backend=backend))


def test_no_grad_and_a_student_that_needs_none():
    student, teacher = random_logits(3, 40)
    top = sparse(teacher, 10)
    with torch.no_grad():
        loss = lk.ldrld_loss(student.requires_grad_(), top)
    assert not loss.requires_grad
    loss = lk.ldrld_loss(student.detach(), top)
    assert not loss.requires_grad and torch.isfinite(loss)
