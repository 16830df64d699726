"""torch.compile and CUDA graphs: the Triton path as a custom op, the PyTorch path traced."""

import pytest
import torch

import ldrld_kernels as lk
from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels import ops
from tests.helpers import DEVICE, random_logits, requires_triton, triton_runs_here

BACKENDS = ["torch", pytest.param("triton", marks=requires_triton)]


@requires_triton
@pytest.mark.parametrize("with_target", [True, False])
def test_opcheck(with_target):
    # (the ops run inside ``api._LDRLDFunction``, whose autograd they need not know)
    student, teacher = (x.to(DEVICE) for x in random_logits(3, 50))
    target = torch.tensor([1, -100, 4], device=DEVICE) if with_target else None
    config = LossConfig(alpha=1.5, beta=0.5, rank_by="student" if with_target else "teacher")
    args = (student, teacher, target, torch.tensor(0.5, device=DEVICE), *config.values(),
            True, False)
    result = torch.library.opcheck(ops.ldrld_rows, args)
    assert set(result.values()) == {"SUCCESS"}, result
    result = torch.library.opcheck(ops.scale_, (torch.randn(3, 50, device=DEVICE),
                                                torch.tensor(2.0, device=DEVICE)))
    assert set(result.values()) == {"SUCCESS"}, result


@requires_triton
@pytest.mark.parametrize("rank_by", ["student", "teacher"])
def test_opcheck_sparse(rank_by):
    student, teacher = (x.to(DEVICE) for x in random_logits(3, 50))
    top = lk.SparseTeacher.from_logits(teacher, 12)
    config = LossConfig(rank_by=rank_by)
    for target, need in ((torch.tensor([1, -100, 4], device=DEVICE), True), (None, False)):
        args = (student, *top, target, torch.tensor(0.5, device=DEVICE), *config.values(),
                need)
        result = torch.library.opcheck(ops.ldrld_sparse_rows, args)
        assert set(result.values()) == {"SUCCESS"}, result


def _models(num_classes: int):
    torch.manual_seed(0)
    student = torch.nn.Linear(16, num_classes).to(DEVICE)
    teacher = torch.nn.Linear(16, num_classes).to(DEVICE).requires_grad_(False)
    inputs = torch.randn(6, 16, device=DEVICE)
    target = torch.randint(0, num_classes, (6,), device=DEVICE)
    target[2] = -100
    return student, teacher, inputs, target


# a user compiling a training step sees no warnings from the loss
@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_classes", [100, 20000])
def test_compiled_step_matches_eager(backend, num_classes):
    student, teacher, inputs, target = _models(num_classes)

    def loss_fn(x, y):
        return lk.ldrld_loss(student(x), teacher(x), y, backend=backend, k=7, alpha=2.0)

    eager = loss_fn(inputs, target)
    eager.backward()
    eager_grad = student.weight.grad.clone()
    student.weight.grad = None

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True)(inputs, target)  # a break raises
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.weight.grad, eager_grad, rtol=1e-5, atol=1e-6)


def _compiled_matches_eager(loss_fn, inputs, target, student):
    """``torch.compile(loss_fn, fullgraph=True)`` (a graph break raises) gives the eager loss
    and the eager gradients of the ``student`` layer."""
    eager = loss_fn(inputs, target)
    eager.backward()
    eager_grads = [student.weight.grad.clone(), student.bias.grad.clone()]
    student.zero_grad(set_to_none=True)

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True)(inputs, target)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for got, want in zip((student.weight.grad, student.bias.grad), eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_fused_linear_step_matches_eager(backend, reduction):
    # (chunks of 4 of 6 rows: a full chunk and a partial one)
    student, teacher, inputs, target = _models(100)

    def loss_fn(x, y):
        loss = lk.ldrld_fused_linear_loss(
            x, student.weight, x, teacher.weight, y, student_bias=student.bias,
            teacher_bias=teacher.bias, chunk_rows=4, backend=backend, reduction=reduction)
        return loss.sum()

    _compiled_matches_eager(loss_fn, inputs, target, student)


@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_fused_linear_step_with_layer_options(backend):
    """A logit scale, softcaps and a teacher layer padded past the vocabulary: compiled as
    eager (reduction="none": the chunks run again in backward)."""
    student, teacher, inputs, target = _models(100)
    padded = torch.cat([teacher.weight, teacher.weight[:8]])

    def loss_fn(x, y):
        loss = lk.ldrld_fused_linear_loss(
            x, student.weight, x, padded, y, student_bias=student.bias, chunk_rows=4,
            backend=backend, reduction="none", num_classes=100, student_logit_scale=0.5,
            student_softcap=3.0, teacher_softcap=4.0)
        return loss.sum()

    _compiled_matches_eager(loss_fn, inputs, target, student)


@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True])
def test_compiled_step_with_a_sparse_teacher_matches_eager(backend, fused):
    student, teacher, inputs, target = _models(100)
    top = lk.SparseTeacher.from_logits(teacher(inputs).detach(), 16)

    def loss_fn(x, y, ids, logprobs):
        given = lk.SparseTeacher(ids, logprobs)
        if fused:
            return lk.ldrld_fused_linear_loss(x, student.weight, given, None, y,
                                              student_bias=student.bias, chunk_rows=4,
                                              backend=backend)
        return lk.ldrld_loss(student(x), given, y, backend=backend)

    eager = loss_fn(inputs, target, *top)
    eager.backward()
    eager_grad = student.weight.grad.clone()
    student.weight.grad = None
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True)(inputs, target, *top)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.weight.grad, eager_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(torch._dynamo.config, "trace_autograd_ops"),
                    reason="this PyTorch cannot trace backward() inside a compiled region")
@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_step_with_backward_inside(backend):
    student, teacher, inputs, target = _models(100)

    def step(x, y):
        loss = lk.ldrld_loss(student(x), teacher(x), y, backend=backend)
        loss.backward()
        return loss.detach()

    eager = step(inputs, target)
    eager_grad = student.weight.grad.clone()
    student.weight.grad = None
    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):  # restores the option after
        compiled = torch.compile(step, fullgraph=True)(inputs, target)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.weight.grad, eager_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("num_classes", [1000, 20000])
@pytest.mark.parametrize("with_target", [True, False])
def test_cuda_graph_replay_matches_eager(num_classes, with_target):
    assert triton_runs_here()
    rows = 8
    static_s = torch.zeros(rows, num_classes, device="cuda", requires_grad=True)
    static_t = torch.zeros(rows, num_classes, device="cuda")
    static_y = torch.zeros(rows, dtype=torch.long, device="cuda")

    def step():
        target = static_y if with_target else None
        loss = lk.ldrld_loss(static_s, static_t, target, k=7)
        loss.backward()
        return loss

    def load(seed):
        student, teacher = random_logits(rows, num_classes, seed=seed)
        target = torch.randint(0, num_classes, (rows,))
        target[1] = -100
        with torch.no_grad():
            static_s.copy_(student)
            static_t.copy_(teacher)
            static_y.copy_(target)

    load(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            static_s.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    static_s.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()

    for seed in (1, 2):
        load(seed)
        graph.replay()
        replayed_loss, replayed_grad = static_loss.clone(), static_s.grad.clone()
        student = static_s.detach().clone().requires_grad_()
        eager = lk.ldrld_loss(student, static_t, static_y if with_target else None, k=7)
        eager.backward()
        torch.testing.assert_close(replayed_loss, eager)
        torch.testing.assert_close(replayed_grad, student.grad)
