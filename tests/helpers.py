"""Inputs and expectations shared by the test modules."""

import contextlib
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ldrld_kernels import backends
from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels import hardware, launcher, policy
from ldrld_kernels.pytorch import vectorized
from ldrld_kernels.sparse import SparseTeacher
from ldrld_kernels.tools.check import GRAD_TOLERANCES, LOSS_TOLERANCES, compare_with_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parents[1]

GOLDEN = json.loads((Path(__file__).parent / "data" / "released_ldrld.json").read_text())
GOLDEN_IDS = [f"C{case['classes']}-k{case['k']}-T{case['temperature']:g}"
              for case in GOLDEN["cases"]]


def run_python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` as a user's shell starts it: a fresh process without the
    TRITON_INTERPRET of this session, in the repository root and with it on the path."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False, cwd=ROOT)


def load_example(name: str):
    """``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_logits(*shape: int, dtype=torch.float32, scale: float = 3.0, seed: int = 0):
    """Fresh random student and teacher logits of ``shape``, never zeros."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
    teacher = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
    return student.to(dtype), teacher.to(dtype)


def random_target(*shape: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, num_classes, shape, generator=generator)


def check_golden(case: dict, loss_fn, dtype: torch.dtype, rtol: float, device="cpu") -> None:
    """``loss_fn`` (the signature of ``ldrld_loss``) reproduces one released-code case."""
    student = torch.tensor(case["student_logits"], dtype=dtype, device=device,
                           requires_grad=True)
    teacher = torch.tensor(case["teacher_logits"], dtype=dtype, device=device)
    out = loss_fn(
        student, teacher, torch.tensor(case["target"], device=device), k=case["k"],
        temperature=case["temperature"], alpha=case["alpha"], beta=case["beta"],
        ce_weight=case["ce_weight"], return_parts=True,
    )
    out.loss.backward()
    assert out.local.item() == pytest.approx(case["local"], rel=rtol)
    assert out.rntk.item() == pytest.approx(case["rntk"], rel=rtol, abs=1e-12)
    assert out.loss.item() == pytest.approx(case["loss"], rel=rtol)
    expected_grad = torch.tensor(case["student_grad"], dtype=torch.float64)
    torch.testing.assert_close(student.grad.cpu().double(), expected_grad, rtol=rtol,
                               atol=rtol * expected_grad.abs().max().item())


def triton_runs_here() -> bool:
    return "triton" in backends.available(torch.device(DEVICE))


requires_triton = pytest.mark.skipif(
    not triton_runs_here(), reason="needs triton and a GPU or TRITON_INTERPRET=1")


def to_device(teacher):
    """Teacher logits, or a ``SparseTeacher``'s tensors, on DEVICE."""
    if isinstance(teacher, SparseTeacher):
        return SparseTeacher(*(x.to(DEVICE) for x in teacher))
    return teacher.to(DEVICE)


def assert_matches(backend: str, student, teacher, target=None, **kwargs) -> None:
    """``backend`` agrees with the float64 reference on these inputs (on DEVICE), loss and both
    gradients (a ``SparseTeacher``: the student's, against its completed rows), under a fixed
    random upstream gradient."""
    target = None if target is None else target.to(DEVICE)
    result = compare_with_reference(student.to(DEVICE), to_device(teacher), target,
                                     backend=backend,
                                     generator=torch.Generator().manual_seed(7), **kwargs)
    assert result.passed, result


def launch_matches(student, teacher, target, launch: policy.FusedLaunch, **options):
    """The Triton launcher with ``launch`` against the PyTorch path in float64 (itself checked
    against the reference): row losses, parts and both gradients, under a mean's scale."""
    config = LossConfig(**{"k": 7, **options})
    rows_, parts, grad_s, grad_t = launcher.ldrld_rows(
        student.to(DEVICE), teacher.to(DEVICE), None if target is None else target.to(DEVICE),
        config, True, True, torch.tensor(0.25, device=DEVICE), launch=launch)
    expected = vectorized.ldrld_rows(student.double(), teacher.double(), target, config,
                                     True, True, torch.tensor(0.25, dtype=torch.float64))
    loss_tol = LOSS_TOLERANCES[torch.float32]
    for actual, wanted in zip((rows_, parts), expected[:2], strict=True):
        scale_ = max(1.0, float(wanted.abs().max()))
        torch.testing.assert_close(actual.cpu().double(), wanted, rtol=loss_tol.rtol,
                                   atol=2e-6 * scale_)
    for actual, wanted, like in zip((grad_s, grad_t), expected[2:], (student, teacher),
                                    strict=True):
        tol = GRAD_TOLERANCES[like.dtype]
        scale_ = max(1.0, float(wanted.abs().max()))
        torch.testing.assert_close(actual.cpu().double(), wanted, rtol=tol.rtol,
                                   atol=tol.atol * scale_ + 1e-7)
    return launch


@contextlib.contextmanager
def wide_rows(max_fused: int = 64, l2_bytes: int = 16384) -> Iterator[None]:
    """Public calls inside send rows past ``max_fused`` classes down the wide-row path, with an
    interpreter whose L2 holds a few such rows: several splits per row and waves of rows."""
    saved = policy.MAX_FUSED, hardware.INTERPRETER
    policy.MAX_FUSED = max_fused
    hardware.INTERPRETER = dataclasses.replace(hardware.INTERPRETER, l2_bytes=l2_bytes)
    try:
        yield
    finally:
        policy.MAX_FUSED, hardware.INTERPRETER = saved


HALF_BAR = 1e-3  # relative L1 error of a float16 gradient under GradScaler's factor


def half_gradient_problems(loss_of, student: torch.Tensor, teacher: torch.Tensor,
                           reduction: str, backend: str) -> list[str]:
    """What is wrong with float16 gradients under GradScaler: ``loss_of(student, teacher,
    backend)`` is differentiated times 65,536 ("mean") or 65,536 / rows ("sum", so that the
    product stays finite), on ``student`` and ``teacher`` in float16 (both get gradients)
    with ``backend`` and on their float64 copies with the PyTorch path. Each float16 gradient
    must be within ``HALF_BAR`` (relative L1) of the float64 one times the factor, and have
    no more zeros than that product rounded to float16."""
    factor = 65536.0 if reduction == "mean" else 65536.0 / student.shape[0]
    grads = []
    for dtype, run_on in ((torch.float16, backend), (torch.float64, "torch")):
        s, t = (x.half().to(dtype).detach().requires_grad_() for x in (student, teacher))
        (loss_of(s, t, run_on) * factor).backward()
        grads.append((s.grad, t.grad))
    problems = []
    for name, half, wide in zip(("student", "teacher"), *grads, strict=True):
        assert half.dtype == torch.float16 and half.device == student.device
        half, wide = half.cpu().double(), wide.cpu()
        error = float((half - wide).abs().sum() / wide.abs().sum())
        zeros, wanted_zeros = int((half == 0).sum()), int((wide.half() == 0).sum())
        if not error <= HALF_BAR or zeros > wanted_zeros:
            problems.append(f"{name} gradient: relative L1 error {error:.3g} (bar "
                            f"{HALF_BAR:g}), {zeros} zeros (float64 rounded: {wanted_zeros})")
    return problems
