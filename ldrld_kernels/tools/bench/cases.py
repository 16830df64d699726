"""The cases ``ldrld bench`` times: the shapes, dtypes and backends, their inputs, the step
each runs (forward, then the gradient of the student), and why a case is skipped."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

import torch

# (reference: installed from reference/ by setuptools' package-dir, which mypy cannot see)
from ldrld_kernels import backends, config, reference  # type: ignore[attr-defined]
from ldrld_kernels.api import ldrld_loss
from ldrld_kernels.sparse import SparseTeacher
from ldrld_kernels.tools.bench.measure import free_memory_bytes, step_peak_memory_bytes


@dataclass(frozen=True)
class Shape:
    name: str
    rows: int
    classes: int
    k: int = 7


SHAPES = (
    Shape("imagenet", 256, 1000),
    Shape("vocab-8k", 4096, 8192),
    Shape("imagenet-21k", 4096, 21843),
    Shape("llm-32k", 8192, 32000),
    Shape("llm-128k", 4096, 128256),
    Shape("llm-256k", 2048, 262144),
    Shape("llm-256k-64rows", 64, 262144),
)


QUICK_SHAPES = (Shape("imagenet", 256, 1000), Shape("llm-32k-16rows", 16, 32000))


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# the loss's backends (``backend=`` but "auto"), then the baselines of the same run
BACKENDS = (*config.BACKENDS[1:], "torch.compile", "reference")


# The reference builds k(k-1)/2 + 2 full-width softmaxes with autograd: past this many logits
# it takes minutes and tens of GB, so it runs only on the small shapes.
REFERENCE_MAX_ELEMENTS = 1 << 22


# Device memory each backend needs, in float32 logit tensors of the shape (measured peaks,
# rounded up): a case that would not fit is skipped with a message.
WORKSPACE_TENSORS = {"triton": 4, "torch": 20, "torch.compile": 20, "reference": 130}


# A sparse teacher's classes a row (its top-K, ``sparse``), at most C
SPARSE_LISTED = 64

# The backends that time a sparse teacher beside the teacher's logits: the loss's own
SPARSE_BACKENDS = config.BACKENDS[1:]


def compulsory_bytes(rows: int, classes: int, student_dtype: torch.dtype,
                     teacher_dtype: torch.dtype, listed: int = 0) -> int:
    """Read the student and the teacher logits once, write the student gradient once; with
    ``listed`` > 0, a sparse teacher's ids (int64) and log-probabilities (``teacher_dtype``)
    instead of the teacher's logits."""
    student = torch.empty((), dtype=student_dtype).element_size()
    teacher = torch.empty((), dtype=teacher_dtype).element_size()
    if listed:
        return rows * (2 * classes * student + listed * (8 + teacher))
    return rows * classes * (2 * student + teacher)


def sparse_teacher(teacher: torch.Tensor) -> SparseTeacher:
    """The top ``SPARSE_LISTED`` (at most C) of the teacher's logits, log-probabilities in
    float32: what a teacher run saves to disk."""
    return SparseTeacher.from_logits(teacher, min(SPARSE_LISTED, teacher.shape[-1]))


def make_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(shape.rows, shape.classes, generator=generator) * 3
    teacher = torch.randn(shape.rows, shape.classes, generator=generator) * 3
    target = torch.randint(0, shape.classes, (shape.rows,), generator=generator)
    return student.to(device, dtype), teacher.to(device, dtype), target.to(device)


@functools.cache
def _compiled_torch_path():
    return torch.compile(functools.partial(ldrld_loss, backend="torch"), dynamic=True)


def loss_function(backend: str):
    if backend == "reference":
        return reference.ldrld_loss
    if backend == "torch.compile":
        return _compiled_torch_path()
    return functools.partial(ldrld_loss, backend=cast(config.Backend, backend))  # (checked there)


def training_step(loss_fn, student, teacher, target, k):
    student = student.detach().requires_grad_(True)
    loss = loss_fn(student, teacher, target, k=k)
    return torch.autograd.grad(loss, student)[0]


def peak_memory_bytes(backend: str, shape: Shape, device: torch.device,
                      inputs: tuple[torch.Tensor, torch.Tensor | SparseTeacher, torch.Tensor]
                      ) -> int | None:
    """Peak memory of one step beyond its inputs (``step_peak_memory_bytes``)."""
    return step_peak_memory_bytes(
        functools.partial(training_step, loss_function(backend), *inputs, shape.k), device)


def skip_reason(backend: str, shape: Shape, device: torch.device) -> str | None:
    elements = shape.rows * shape.classes
    if backend == "reference" and elements > REFERENCE_MAX_ELEMENTS:
        return "skipped: reference too slow at this size"
    needed = WORKSPACE_TENSORS[backend] * elements * 4
    free = free_memory_bytes(device)
    if needed > 0.8 * free:
        return f"skipped: needs ~{needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    return None


def available_backends(device: torch.device, interpret: bool) -> list[str]:
    """triton where it compiles (or, with ``interpret``, under the interpreter), the torch
    path, ``torch.compile`` of it on a GPU, and the reference."""
    names = [name for name in backends.available(device)
             if name != "triton" or device.type == "cuda" or interpret]
    if device.type == "cuda":
        names.append("torch.compile")
    return [*names, "reference"]
