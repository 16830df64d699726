"""DTensor logits (``pytorch.dtensor``) on CPU with gloo, in spawned processes, as
``test_parallel`` runs ``process_group=``: logits placed Shard(-1) on a 1-D mesh against the
single-process loss on the whole rows (loss, parts, and the gradients, which must come back
as DTensors placed Shard(-1) on the same mesh), and every placement that is refused.

One spawn per world size runs every case; each rank writes what failed to a file that the
test reads.
"""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ldrld_kernels as lk
from ldrld_kernels.pytorch import parallel
from tests.pytorch.test_parallel import TOLERANCE, _logits

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _close(name, what, got, want, eps, failures):
    got, want = got.detach().double(), want.detach().double()
    scale = max(1.0, float(want.abs().max()) if want.numel() else 0.0)
    if got.shape != want.shape:
        failures.append(f"{name}: {what} has shape {tuple(got.shape)}, not {tuple(want.shape)}")
    elif not torch.allclose(got, want, rtol=eps, atol=eps * scale):
        failures.append(f"{name}: {what} differs by {float((got - want).abs().max()):.3g}")


def _compare(name, mesh, student, teacher, target, failures, backend="torch",
             teacher_grad=False, as_module=False, replicate=False, **options):
    """The call on DTensors of ``student`` and ``teacher`` placed Shard(-1) on ``mesh`` (a
    ``SparseTeacher``'s tensors, and the target, as given or with ``replicate`` placed
    Replicate()) against the single-process call on the whole tensors, on
    ``backend`` (the Triton kernel takes the float64 logits in float32), under one non-unit
    upstream gradient, the same on every rank."""
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    sparse = isinstance(teacher, lk.SparseTeacher)
    group = options.pop("process_group", None)  # (given with the DTensors only)
    if backend == "triton":
        student, name = student.float(), f"triton {name}"
        teacher = lk.SparseTeacher(teacher.ids, teacher.logprobs.float()) if sparse \
            else teacher.float()
    results = []
    for distributed in (True, False):
        s, t = student.clone(), teacher
        if not sparse:
            t = teacher.clone()
        y = target
        if distributed:
            s = distribute_tensor(s, mesh, [Shard(-1)])
            if not sparse:
                t = distribute_tensor(t, mesh, [Shard(-1)])
            if replicate:
                y = None if target is None else distribute_tensor(target, mesh, [Replicate()])
                if sparse:
                    t = lk.SparseTeacher(*(distribute_tensor(x, mesh, [Replicate()])
                                           for x in teacher))
        s.requires_grad_()
        if not sparse:
            t.requires_grad_(teacher_grad)
        keywords = dict(options, process_group=group if distributed else None)
        if as_module:
            out = lk.LDRLDLoss(return_parts=True, backend=backend, **keywords)(s, t, y)
        else:
            out = lk.ldrld_loss(s, t, y, return_parts=True, backend=backend, **keywords)
        upstream = torch.randn(out.loss.shape, dtype=out.loss.dtype,
                               generator=torch.Generator().manual_seed(7))
        out.loss.backward(upstream)
        grads = [s.grad] + ([t.grad] if teacher_grad else [])
        if distributed:
            for what, value in (("loss", out.loss), ("parts", out.ce)):
                if isinstance(value, DTensor):
                    failures.append(f"{name}: the {what} is a DTensor, not a plain tensor")
            for what, grad in zip(("student grad", "teacher grad"), grads, strict=False):
                if not isinstance(grad, DTensor) or grad.device_mesh != mesh or \
                        tuple(grad.placements) != (Shard(student.dim() - 1),):
                    failures.append(f"{name}: the {what} is {type(grad).__name__} "
                                    f"{getattr(grad, 'placements', '')}, not a DTensor placed "
                                    "Shard(-1) on the logits' mesh")
                    return
            grads = [grad.full_tensor() for grad in grads]
        results.append([*out, *grads])
    compute = torch.promote_types(student.dtype, torch.float32)
    for what, got, want in zip(("loss", "ce", "local", "rntk", "student grad", "teacher grad"),
                               *results, strict=False):
        eps = TOLERANCE[compute] if "grad" not in what or student.dtype == compute \
            else torch.finfo(student.dtype).eps
        _close(name, what, got, want, eps, failures)


def _cases(rank: int, world: int, failures: list[str], backend: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    # C = 37: 19 + 18 over 2 ranks, 13 + 13 + 11 over 3; C = 40: 14 + 14 + 12 over 3
    student, teacher = _logits(5, 37, torch.float64, seed=31)
    target = torch.tensor([-100, 4, 36, 0, 20])
    if backend == "triton":
        _compare("C=37", mesh, student, teacher, target, failures, backend, teacher_grad=True)
        return
    for reduction in ("mean", "sum", "none"):
        _compare(f"C=37 {reduction}", mesh, student, teacher, target, failures,
                 reduction=reduction)
    _compare("C=37 no target, k=3", mesh, student, teacher, None, failures, k=3)
    student, teacher = _logits(4, 40, torch.float64, seed=32)
    target = torch.tensor([3, 39, 13, 14])  # (13 | 14: the boundary of 3 ranks' slices)
    _compare("C=40 Replicate target, LDRLDLoss", mesh, student, teacher, target, failures,
             as_module=True, replicate=True)
    _compare("C=40 rank_by teacher", mesh, student, teacher, target, failures,
             rank_by="teacher", temperature=2.0, teacher_grad=True)
    _compare("C=40 process_group of the mesh", mesh, student, teacher, target, failures,
             process_group=dist.group.WORLD)
    student, teacher = _logits(4, 40, torch.float32, seed=33)
    _compare("C=40 float32", mesh, student, teacher, target, failures, teacher_grad=True)
    # torch.chunk of 4 classes over 3 ranks: 2, 2 and an empty slice
    student, teacher = _logits(3, 4, torch.float64, seed=34)
    _compare("C=4", mesh, student, teacher, torch.tensor([0, 3, 2]), failures, k=3)
    # (batch, sequence, C), as a language model's output layer leaves them
    student, teacher = _logits(6, 37, torch.float64, seed=35)
    student, teacher = student.reshape(2, 3, 37), teacher.reshape(2, 3, 37)
    target = torch.tensor([[1, 18, 19], [-100, 25, 36]])
    for reduction in ("mean", "none"):
        _compare(f"(2, 3, 37) {reduction}", mesh, student, teacher, target, failures,
                 reduction=reduction, teacher_grad=True)
    # a sparse teacher's global ids, plain and Replicate()
    student, teacher = _logits(4, 37, torch.float64, seed=36)
    top = lk.SparseTeacher.from_logits(teacher, 9)
    target = torch.tensor([0, 36, -100, 14])
    _compare("sparse teacher", mesh, student, top, target, failures, rank_by="teacher")
    _compare("sparse teacher, none", mesh, student, top, target, failures, reduction="none")
    _compare("sparse teacher Replicate()", mesh, student, top, target, failures,
             replicate=True)
    # an NCCL-only group's check (forced here on gloo): on the device, asynchronous
    original = parallel.checks_on_host
    parallel.checks_on_host = lambda group, device: False
    try:
        student, teacher = _logits(4, 37, torch.float64, seed=37)
        _compare("device-side check", mesh, student, teacher, torch.tensor([3, 36, -100, 17]),
                 failures, teacher_grad=True)
        _expect_error("device-side check of the layout", failures, RuntimeError,
                      ("torch.chunk",), *_off_layout(mesh, rank, world))
    finally:
        parallel.checks_on_host = original


def _off_layout(mesh, rank: int, world: int):
    """DTensors of 40 classes whose local slices are not torch.chunk's (from_local with the
    global shape given): the first rank holds 5 classes, the next ones the rest."""
    from torch.distributed.tensor import DTensor, Shard

    widths = [5, 35] if world == 2 else [5, 20, 15]
    student, teacher = _logits(4, 40, torch.float64, seed=38)
    here = slice(sum(widths[:rank]), sum(widths[:rank + 1]))
    return [DTensor.from_local(x[:, here], mesh, [Shard(-1)], run_check=False,
                               shape=x.shape, stride=x.stride()) for x in (student, teacher)]


def _expect_error(name, failures, error_type, words, student, teacher, target=None,
                  **options):
    try:
        lk.ldrld_loss(student, teacher, target, backend="torch", **options)
        failures.append(f"{name}: no error")
    except error_type as error:
        missing = [word for word in words if word not in str(error)]
        if missing:
            failures.append(f"{name}: {missing} not in {error}")


def _error_cases(rank: int, world: int, failures: list[str]) -> None:
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    student, teacher = _logits(4, 40, torch.float64, seed=39)
    target = torch.tensor([0, 1, 2, 3])
    s, t = (distribute_tensor(x, mesh, [Shard(-1)]) for x in (student, teacher))
    works = "placed (Shard(-1),)"
    placed = {"Replicate()": distribute_tensor(student, mesh, [Replicate()]),
              "Partial(sum)": DTensor.from_local(student / world, mesh, [Partial()]),
              "Shard(dim=0)": distribute_tensor(student, mesh, [Shard(0)])}
    for placement, other in placed.items():
        _expect_error(f"student {placement}", failures, ValueError,
                      ("student_logits", placement, works), other, t, target)
        _expect_error(f"teacher {placement}", failures, ValueError,
                      ("teacher_logits", placement, works), s, other, target)
    mesh_2d = init_device_mesh("cpu", (world, 1))
    _expect_error("2-D mesh", failures, ValueError,
                  ("student_logits", "(Shard(dim=1), Replicate())", "2-D mesh", works),
                  *(distribute_tensor(x, mesh_2d, [Shard(-1), Replicate()])
                    for x in (student, teacher)), target)
    _expect_error("reversed mesh", failures, ValueError, ("increasing order",),
                  *(distribute_tensor(x, DeviceMesh("cpu", list(range(world))[::-1]),
                                      [Shard(-1)]) for x in (student, teacher)), target)
    _expect_error("teacher on other ranks", failures, ValueError, ("meshes of the same ranks",),
                  s, distribute_tensor(teacher, DeviceMesh("cpu", [0, 1]) if world == 3
                                       else DeviceMesh("cpu", [0]), [Shard(-1)]), target)
    _expect_error("plain teacher", failures, TypeError, ("teacher_logits", "DTensor"),
                  s, teacher, target)
    _expect_error("plain student", failures, TypeError, ("teacher_logits", "student_logits"),
                  student, t, target)
    _expect_error("plain logits, DTensor target", failures, TypeError,
                  ("target is a DTensor",), student, teacher,
                  distribute_tensor(target, mesh, [Replicate()]))
    _expect_error("sharded target", failures, ValueError, ("target", "Shard(dim=0)", works),
                  s, t, distribute_tensor(target, mesh, [Shard(0)]))
    top = lk.SparseTeacher.from_logits(teacher, 8)
    _expect_error("sharded ids", failures, ValueError,
                  ("teacher.ids (SparseTeacher)", "Shard(dim=0)", "Replicate()"), s,
                  lk.SparseTeacher(distribute_tensor(top.ids, mesh, [Shard(0)]), top.logprobs))
    _expect_error("global shapes", failures, ValueError, ("same shape", "(4, 40)", "(4, 39)"),
                  s, distribute_tensor(teacher[:, :39], mesh, [Shard(-1)]), target)
    _expect_error("another process_group", failures, ValueError,
                  ("process_group spans ranks [0]",), s, t, target,
                  process_group=dist.new_group([0]))
    _expect_error("local slices off torch.chunk", failures, ValueError,
                  ("torch.chunk", "[5, 35]" if world == 2 else "[5, 20, 15]"),
                  *_off_layout(mesh, rank, world), target)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    failures: list[str] = []
    try:
        for backend in ["torch"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1"
                                    else []):
            _cases(rank, world, failures, backend)
        _error_cases(rank, world, failures)
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(failures, handle)
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_dtensors_match_single_process(world, tmp_path):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world,
             join=True)
    failures = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text())
                for rank in range(world)}
    assert failures == {rank: [] for rank in range(world)}


def test_no_dtensor_module_imported():
    """Plain tensors never import torch.distributed.tensor (it takes longer than the package
    itself); a DTensor exists only once it is imported."""
    from tests.helpers import run_python

    result = run_python("-c", "import sys, torch, ldrld_kernels as lk\n"
                        "s, t = torch.randn(2, 2, 9).unbind()\n"
                        "lk.ldrld_loss(s, t, backend='torch')\n"
                        "print(sorted(m for m in sys.modules if m.startswith("
                        "'torch.distributed.tensor')))", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
