"""Vocabulary-parallel LDRLD (``process_group=``) on CPU with gloo, in spawned processes: every
rank's loss, parts and gradient slices against the single-process loss on the whole rows (a
sparse teacher's: against the reference on the completed rows), on the PyTorch path and
(under the Triton interpreter) on the Triton kernel.

One spawn per world size runs every case (starting processes is the slow part); each rank
writes what failed to a file that the test reads.
"""

import functools
import json
import math
import os
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ldrld_kernels as lk
from ldrld_kernels import reference
from ldrld_kernels.pytorch import parallel
from tests.helpers import half_gradient_problems, run_python

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6}


def _slices(widths: list[int], rank: int) -> slice:
    start = sum(widths[:rank])
    return slice(start, start + widths[rank])


def _logits(rows: int, num_classes: int, dtype: torch.dtype, seed: int):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, num_classes, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(rows, num_classes, generator=generator, dtype=torch.float64) * 3
    return student.to(dtype), teacher.to(dtype)


def _compare(name, rank, widths, student, teacher, target, failures, backend="torch",
             **options):
    """The sharded call on this rank's slice against the single-process call, both on
    ``backend`` (the Triton kernel takes the float64 logits of a case in float32)."""
    here = _slices(widths, rank)
    if backend == "triton":
        student, teacher = (x.float() if x.dtype == torch.float64 else x
                            for x in (student, teacher))
        name = f"triton {name}"
    teacher_grad = options.pop("teacher_grad", False)
    results = []
    for sharded in (True, False):
        s = (student[:, here] if sharded else student).clone().requires_grad_()
        t = (teacher[:, here] if sharded else teacher).clone().requires_grad_(teacher_grad)
        out = lk.ldrld_loss(s, t, target, return_parts=True, backend=backend,
                            process_group=dist.group.WORLD if sharded else None, **options)
        out.loss.backward(torch.ones_like(out.loss))
        grads = [s.grad if sharded else s.grad[:, here]]
        if teacher_grad:
            grads.append(t.grad if sharded else t.grad[:, here])
        results.append([out.loss, out.ce, out.local, out.rntk, *grads])
    compute = torch.promote_types(student.dtype, torch.float32)
    # (the teacher's gradient only when asked for: the names may outnumber the results)
    for what, got, want in zip(("loss", "ce", "local", "rntk", "student grad", "teacher grad"),
                               *results, strict=False):
        got, want = got.detach().double(), want.detach().double()
        # gradients are rounded to the inputs' dtype: one unit of it apart at most
        eps = TOLERANCE[compute] if what in ("loss", "ce", "local", "rntk") or \
            student.dtype == compute else torch.finfo(student.dtype).eps
        scale = max(1.0, float(want.abs().max()) if want.numel() else 0.0)
        if not torch.allclose(got, want, rtol=eps, atol=eps * scale, equal_nan=True):
            failures.append(f"{name}: {what} differs by {float((got - want).abs().max()):.3g}")


def _cases(rank: int, world: int, failures: list[str], backend: str) -> None:
    compare = functools.partial(_compare, backend=backend)
    even = [40 // world + (i < 40 % world) for i in range(world)]
    uneven = [5, 35] if world == 2 else [3, 30, 7]  # the first narrower than k = 7
    empty = [0, 40] if world == 2 else [3, 0, 37]  # a rank with no class at all
    for dtype in (torch.float64, torch.float32) if backend == "torch" else (torch.float32,):
        student, teacher = _logits(4, 40, dtype, seed=1)
        target = torch.tensor([3, 39, 0, 17])
        for widths in (even, uneven, empty):
            compare(f"random {dtype} {widths}", rank, widths, student, teacher, target,
                     failures)
    student, teacher = _logits(4, 40, torch.float64, seed=2)
    # ties straddling the shard boundaries, and every logit equal in one row
    for boundary in (even[0], uneven[0]):
        student[:, boundary - 2:boundary + 2] = 9.0
    student[3] = 1.0
    for widths in (even, uneven):
        compare(f"ties {widths}", rank, widths, student, teacher, None, failures, k=3)
        compare(f"ties k=16 {widths}", rank, widths, student, teacher, None, failures, k=16)
    # one shard holds all of the top-k, the others none
    student, teacher = _logits(3, 40, torch.float64, seed=3)
    student[:, uneven[0] + 5:uneven[0] + 12] += 20.0
    compare("top-k in one shard", rank, uneven, student, teacher, torch.tensor([1, 2, 3]),
             failures)
    # a rank whose teacher logits are all padding, ranked by the teacher; k = C - 1
    student, teacher = _logits(3, 40, torch.float64, seed=12)
    compare("k = C - 1", rank, uneven, student, teacher, torch.tensor([1, 2, 39]), failures,
            k=39)
    teacher[:, sum(uneven[:-1]):] = -math.inf
    compare("teacher padding on a rank", rank, uneven, student, teacher,
            torch.tensor([1, 2, 3]), failures, k=3, rank_by="teacher")
    # ignored rows and every reduction; the teacher's ranking and gradient; bfloat16
    student, teacher = _logits(5, 40, torch.float64, seed=4)
    target = torch.tensor([-100, 4, -100, 30, 12])
    for reduction in ("mean", "sum", "none"):
        compare(f"reduction {reduction}", rank, uneven, student, teacher, target, failures,
                 reduction=reduction)
    compare("rank_by teacher", rank, even, student, teacher, target, failures,
             rank_by="teacher", temperature=2.0, teacher_grad=True)
    student, teacher = _logits(3, 40, torch.bfloat16, seed=5)
    compare("bfloat16", rank, uneven, student, teacher, torch.tensor([0, 9, 39]), failures,
             teacher_grad=True)
    if backend == "triton":
        # T = 3 (the cross-entropy's exponentials of its own), and slices of several splits
        student, teacher = _logits(3, 40, torch.float32, seed=7)
        compare("T=3", rank, uneven, student, teacher, torch.tensor([0, 5, 20]), failures,
                temperature=3.0, teacher_grad=True)
        student, teacher = _logits(3, 3001, torch.float32, seed=8)
        widths = [1500, 1501] if world == 2 else [1000, 1201, 800]
        compare("wide", rank, widths, student, teacher, torch.tensor([0, 1499, 3000]),
                failures, teacher_grad=True)
        return
    # ranks that disagree fail on every rank, with no hang
    for name, k, rows, temperature in (("k", 7 + rank, 4, 4.0), ("row count", 7, 4 + rank, 4.0),
                                       ("temperature", 7, 4, 4.0 + rank)):
        student, teacher = _logits(rows, 40, torch.float64, seed=6)
        here = _slices(even, rank)
        try:
            lk.ldrld_loss(student[:, here], teacher[:, here], k=k, temperature=temperature,
                          backend="torch", process_group=dist.group.WORLD)
            failures.append(f"disagreeing {name}: no error")
        except ValueError as error:
            if f"disagree on the {name}" not in str(error):
                failures.append(f"disagreeing {name}: {error}")
    # and on every other setting: each rank would return another loss
    student, teacher = _logits(4, 40, torch.float64, seed=6)
    here = _slices(even, rank)
    for name, options in (("alpha", {"alpha": 1.0 + rank}),
                          ("adw_decay", {"adw_decay": 0.05 * (1 + rank)}),
                          ("rank_by", {"rank_by": ("student", "teacher")[rank % 2]})):
        try:
            lk.ldrld_loss(student[:, here], teacher[:, here], backend="torch",
                          process_group=dist.group.WORLD, **options)
            failures.append(f"disagreeing {name}: no error")
        except ValueError as error:
            if f"disagree on the {name}" not in str(error):
                failures.append(f"disagreeing {name}: {error}")


def _sparse_compare(name, rank, widths, student, top, target, failures, backend, **options):
    """The sharded call against a sparse teacher ``top`` (the same global ids on every rank)
    on this rank's slice, against the reference on the completed rows (float64)."""
    here = _slices(widths, rank)
    if backend == "triton":
        student, top = student.float(), lk.SparseTeacher(top.ids, top.logprobs.float())
        name = f"triton {name}"
    s = student[:, here].clone().requires_grad_()
    out = lk.ldrld_loss(s, top, target, return_parts=True, backend=backend,
                        process_group=dist.group.WORLD, **options)
    out.loss.backward(torch.ones_like(out.loss))
    s64 = student.double().clone().requires_grad_()
    expected = reference.ldrld_loss(s64, reference.densify(*top, student.shape[1]), target,
                                    return_parts=True, **options)
    expected.loss.backward(torch.ones_like(expected.loss))
    eps = 1e-9 if student.dtype == torch.float64 else 1e-5
    for what, got, want in zip(("loss", "ce", "local", "rntk", "student grad"),
                               (*out, s.grad), (*expected, s64.grad[:, here]), strict=True):
        got, want = got.detach().double(), want.detach()
        scale = max(1.0, float(want.abs().max()) if want.numel() else 0.0)
        if not torch.allclose(got, want, rtol=eps, atol=eps * scale):
            failures.append(f"sparse {name}: {what} differs by "
                            f"{float((got - want).abs().max()):.3g}")


def _sparse_cases(rank: int, world: int, failures: list[str], backend: str) -> None:
    """A sparse teacher's top-K: K = k, between, C; ranked by either; every layout of
    slices, one that holds none of a row's listed classes, and (Triton) wide slices."""
    compare = functools.partial(_sparse_compare, backend=backend)
    even = [40 // world + (i < 40 % world) for i in range(world)]
    uneven = [5, 35] if world == 2 else [3, 30, 7]
    empty = [0, 40] if world == 2 else [3, 0, 37]
    student, teacher = _logits(4, 40, torch.float64, seed=21)
    for listed in (7, 15, 40):
        top = lk.SparseTeacher.from_logits(teacher, listed)
        target = torch.tensor([3, -100, int(top.ids[2, 1]), 39])  # a listed target
        for widths in (even, uneven, empty):
            for rank_by in ("student", "teacher"):
                compare(f"K={listed} {rank_by} {widths}", rank, widths, student, top, target,
                        failures, rank_by=rank_by)
    # every listed class in one rank's slice (the first rank holds none of them)
    start = uneven[0]
    logprobs = teacher.log_softmax(dim=-1)
    ids = logprobs[:, start:].topk(12, dim=-1).indices + start
    top = lk.SparseTeacher(ids, logprobs.gather(1, ids))
    for rank_by in ("student", "teacher"):
        compare(f"listed on one rank {rank_by}", rank, uneven, student, top,
                torch.tensor([0, 1, 2, 3]), failures, rank_by=rank_by, temperature=2.0)
    for reduction in ("sum", "none"):
        compare(f"reduction {reduction}", rank, uneven, student,
                lk.SparseTeacher.from_logits(teacher, 9), None, failures, reduction=reduction)
    if backend == "triton":  # slices of several splits
        student, teacher = _logits(3, 3001, torch.float32, seed=22)
        widths = [1500, 1501] if world == 2 else [1000, 1201, 800]
        for rank_by in ("student", "teacher"):
            compare(f"wide {rank_by}", rank, widths, student,
                    lk.SparseTeacher.from_logits(teacher, 64), torch.tensor([0, 1499, 3000]),
                    failures, rank_by=rank_by, temperature=3.0)


def _half_case(rank: int, world: int, failures: list[str], backend: str) -> None:
    """float16 gradients under GradScaler's factor, against the float64 call."""
    student, teacher = _logits(16, 1200, torch.float64, seed=9)
    here = _slices([1200 // world + (i < 1200 % world) for i in range(world)], rank)
    target = torch.arange(16) * 70

    def loss_of(s, t, run_on):
        return lk.ldrld_loss(s, t, target, backend=run_on, process_group=dist.group.WORLD)

    for problem in half_gradient_problems(loss_of, student[:, here], teacher[:, here], "mean",
                                          backend):
        failures.append(f"{backend} float16: {problem}")


def _fused_linear_case(rank: int, world: int, failures: list[str], backend: str) -> None:
    """``ldrld_fused_linear_loss`` with each rank's rows of the output layers: the loss, the
    hidden states' gradient (summed over the ranks) and each rank's rows of the weights' and
    biases' gradients, against one process with the whole layers; as they are, and with a
    logit scale and a softcap on each (each rank transforms its classes)."""
    dtype = torch.float64 if backend == "torch" else torch.float32
    generator = torch.Generator().manual_seed(11)
    h_s, h_t = (torch.randn(2, 5, size, generator=generator, dtype=dtype) for size in (8, 12))
    w_s, w_t = (torch.randn(40, size, generator=generator, dtype=dtype) for size in (8, 12))
    b_s = torch.randn(40, generator=generator, dtype=dtype)
    target = torch.randint(0, 40, (2, 5), generator=generator)
    target[0, ::3] = -100
    here = _slices([5, 35] if world == 2 else [3, 30, 7], rank)
    transforms = {"student_logit_scale": 0.7, "student_softcap": 3.0,
                  "teacher_logit_scale": 1.5, "teacher_softcap": 5.0}
    for name, options in (("", {}), (" transformed", transforms)):
        results = []
        for sharded in (True, False):
            leaves = [h_s.clone().requires_grad_(),
                      (w_s[here] if sharded else w_s).clone().requires_grad_(),
                      (b_s[here] if sharded else b_s).clone().requires_grad_(),
                      (w_t[here] if sharded else w_t).clone().requires_grad_()]
            out = lk.ldrld_fused_linear_loss(
                leaves[0], leaves[1], h_t, leaves[3], target, student_bias=leaves[2],
                chunk_rows=4, backend=backend, return_parts=True,
                process_group=dist.group.WORLD if sharded else None, **options)
            out.loss.backward()
            grads = [leaf.grad if sharded or i == 0 else leaf.grad[here]
                     for i, leaf in enumerate(leaves)]
            results.append([out.loss, out.rntk, *grads])
        tolerance = TOLERANCE[dtype]
        for what, got, want in zip(("loss", "rntk", "hidden grad", "weight grad", "bias grad",
                                    "teacher weight grad"), *results, strict=True):
            scale = max(1.0, float(want.abs().max()) if want.numel() else 0.0)
            if not torch.allclose(got, want, rtol=tolerance, atol=tolerance * scale):
                failures.append(f"{backend} fused linear{name}: {what} differs by "
                                f"{float((got - want).abs().max()):.3g}")
    # ranks whose layers transform their logits otherwise fail on every rank
    try:
        lk.ldrld_fused_linear_loss(h_s, w_s[here], h_t, w_t[here], target, backend=backend,
                                   student_softcap=3.0 + rank, process_group=dist.group.WORLD)
        failures.append(f"{backend} fused linear, disagreeing softcaps: no error")
    except ValueError as error:
        if "disagree on the student_softcap" not in str(error):
            failures.append(f"{backend} fused linear, disagreeing softcaps: {error}")
    # padded vocabularies are not supported with process_group: num_classes only as the whole
    # vocabulary, and the same rows of both layers on each rank
    group = dist.group.WORLD
    for num_classes, w_teacher, expected in (
            (39, w_t[here], "num_classes must be the group's class count"),
            (None, torch.cat([w_t[here], w_t[:1]]), "padded vocabularies"),  # (every rank)
            (40, w_t[here], None)):
        try:
            lk.ldrld_fused_linear_loss(h_s, w_s[here], h_t, w_teacher, target, backend=backend,
                                       num_classes=num_classes, process_group=group)
            if expected is not None:
                failures.append(f"{backend} fused linear num_classes={num_classes}: no error")
        except ValueError as error:
            if expected is None or expected not in str(error):
                failures.append(f"{backend} fused linear num_classes={num_classes}: {error}")


def _sparse_fused_linear_case(rank: int, world: int, failures: list[str], backend: str) -> None:
    """``ldrld_fused_linear_loss`` against a sparse teacher, each rank with its rows of the
    student's output layer: against one process with the whole layer."""
    dtype = torch.float64 if backend == "torch" else torch.float32
    generator = torch.Generator().manual_seed(13)
    h_s = torch.randn(2, 5, 8, generator=generator, dtype=dtype)
    w_s = torch.randn(40, 8, generator=generator, dtype=dtype)
    b_s = torch.randn(40, generator=generator, dtype=dtype)
    teacher = torch.randn(2, 5, 40, generator=generator, dtype=torch.float64) * 3
    top = lk.SparseTeacher.from_logits(teacher.to(dtype), 12)
    target = torch.randint(0, 40, (2, 5), generator=generator)
    here = _slices([5, 35] if world == 2 else [3, 30, 7], rank)
    results = []
    for sharded in (True, False):
        leaves = [h_s.clone().requires_grad_(),
                  (w_s[here] if sharded else w_s).clone().requires_grad_(),
                  (b_s[here] if sharded else b_s).clone().requires_grad_()]
        out = lk.ldrld_fused_linear_loss(
            leaves[0], leaves[1], top, None, target, student_bias=leaves[2], chunk_rows=4,
            backend=backend, return_parts=True, rank_by="teacher",
            process_group=dist.group.WORLD if sharded else None)
        out.loss.backward()
        results.append([out.loss, out.rntk, *(leaf.grad if sharded or i == 0
                                               else leaf.grad[here]
                                               for i, leaf in enumerate(leaves))])
    tolerance = TOLERANCE[dtype]
    for what, got, want in zip(("loss", "rntk", "hidden grad", "weight grad", "bias grad"),
                               *results, strict=True):
        scale = max(1.0, float(want.abs().max()))
        if not torch.allclose(got, want, rtol=tolerance, atol=tolerance * scale):
            failures.append(f"{backend} sparse fused linear: {what} differs by "
                            f"{float((got - want).abs().max()):.3g}")


def _device_check_cases(rank: int, world: int, failures: list[str], backend: str) -> None:
    """An NCCL-only group's agreement check (``parallel.checks_on_host`` False, forced here on
    gloo): the offsets stay device tensors and a disagreement is an asynchronous assertion
    (on CPU tensors it fails at once)."""
    uneven = [5, 35] if world == 2 else [3, 30, 7]
    original = parallel.checks_on_host
    parallel.checks_on_host = lambda group, device: False
    try:
        student, teacher = _logits(4, 40, torch.float32, seed=9)
        _compare("device-side check", rank, uneven, student, teacher,
                 torch.tensor([3, 39, -100, 17]), failures, backend=backend, teacher_grad=True)
        here = _slices(uneven, rank)
        try:
            lk.ldrld_loss(student[:, here], teacher[:, here], k=7 + rank, backend=backend,
                          process_group=dist.group.WORLD)
            failures.append(f"{backend} device-side check: no error")
        except RuntimeError as error:
            if "disagree" not in str(error):
                failures.append(f"{backend} device-side check: {error}")
    finally:
        parallel.checks_on_host = original


def _ddp_step(rank: int, failures: list[str]) -> None:
    """Data parallel: the loss in a DistributedDataParallel step needs nothing special."""
    from torch.nn.parallel import DistributedDataParallel

    def batch(which: int):
        generator = torch.Generator().manual_seed(100 + which)
        return (torch.randn(6, 8, generator=generator), torch.randn(6, 12, generator=generator),
                torch.randint(0, 12, (6,), generator=generator))

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 12)
    reference = torch.nn.Linear(8, 12)
    reference.load_state_dict(model.state_dict())
    ddp = DistributedDataParallel(model)
    x, teacher, y = batch(rank)
    lk.ldrld_loss(ddp(x), teacher, y, k=3, backend="torch").backward()
    # DDP averages the ranks' gradients: the mean of the two batches' losses, in one process
    losses = [lk.ldrld_loss(reference(bx), bt, by, k=3, backend="torch")
              for bx, bt, by in map(batch, range(dist.get_world_size()))]
    (sum(losses) / len(losses)).backward()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        if not torch.allclose(got.grad, want.grad, rtol=1e-5, atol=1e-7):
            failures.append("DDP step: gradients differ from the single-process mean")


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    failures: list[str] = []
    try:
        backends = ["torch"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])
        for backend in backends:
            _cases(rank, world, failures, backend)
            _sparse_cases(rank, world, failures, backend)
            _device_check_cases(rank, world, failures, backend)
            _fused_linear_case(rank, world, failures, backend)
            _sparse_fused_linear_case(rank, world, failures, backend)
            _half_case(rank, world, failures, backend)
        if world == 2:
            _ddp_step(rank, failures)
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(failures, handle)
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_matches_single_process(world, tmp_path):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world,
             join=True)
    failures = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text())
                for rank in range(world)}
    assert failures == {rank: [] for rank in range(world)}



def test_torchrun_example():
    result = run_python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "examples/vocab_parallel.py", timeout=120)
    assert result.returncode == 0, result.stderr
    found = re.findall(r"rank (\d): .* loss (\S+) one-process (\S+)", result.stdout)
    assert sorted(rank for rank, _, _ in found) == ["0", "1"], result.stdout
    for _, sharded, whole in found:
        assert float(sharded) == pytest.approx(float(whole), rel=1e-6)


def _no_sync_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=0, world_size=1)
    failures: list[str] = []
    try:
        student, teacher = (x.cuda() for x in _logits(64, 4000, torch.bfloat16, seed=10))
        student.requires_grad_()
        target = torch.randint(0, 4000, (64,), device="cuda")
        lk.ldrld_loss(student, teacher, target, backend="triton",
                      process_group=dist.group.WORLD)  # compiles the kernels first
        torch.cuda.synchronize()
        # no pinned host tensor per call either
        torch.Tensor.pin_memory = lambda *args, **kwargs: failures.append("pinned a tensor")
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = lk.ldrld_loss(student, teacher, target, backend="triton",
                                 process_group=dist.group.WORLD)
            loss.backward()
        except RuntimeError as error:
            failures.append(f"host synchronisation: {error}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        with open(os.path.join(out_dir, "rank0.json"), "w") as handle:
            json.dump(failures, handle)
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(),
                    reason="needs a GPU and NCCL")
def test_nccl_call_needs_no_host_sync(tmp_path):
    """On an NCCL-only group (one process), a call and its backward synchronise nothing."""
    mp.spawn(_no_sync_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=1, join=True)
    assert json.loads((tmp_path / "rank0.json").read_text()) == []


def test_device_agreement_needs_no_host_buffer(monkeypatch):
    """On an NCCL-only group the ranks' agreement row is written on the logits' device: no
    pinned host tensor per call, nor a host buffer that a CUDA graph's captured copy would
    re-read after it is freed. The meta device stands in for the GPU, a one-rank gather for
    the group."""
    pinned, gathered = [], []
    monkeypatch.setattr(torch.Tensor, "pin_memory",
                        lambda self, *args, **kwargs: pinned.append(self) or self)
    monkeypatch.setattr(parallel, "checks_on_host", lambda group, device: False)
    monkeypatch.setattr(parallel.Shard, "all_gather",
                        lambda self, tensor: gathered.append(tensor) or [tensor])
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    for device in ("meta", "cpu"):  # (CPU: to read the values)
        student = torch.empty(4, 40, device=device)
        shard = parallel.shard_of(student, None, rows=4, k=3, temperature=2.0,
                                  has_target=True)
        row = gathered.pop()
        assert (row.device, row.dtype) == (student.device, torch.float64)
        assert shard.num_classes.device == student.device
    assert not pinned
    assert row.tolist() == [4, 40, 3, 2.0, 1.0] and int(shard.num_classes) == 40
