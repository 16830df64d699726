"""pytest-benchmark suite: forward + backward of each backend against the released-code style
reference (``reference.ldrld_loss``, one masked full-width softmax per group).

    pytest benchmarks --benchmark-only                 # timings (median is the number to read)
    pytest benchmarks --benchmark-only -k memory -s    # CPU peak memory, printed

Each case reads the student and teacher logits and writes the student gradient; the teacher
does not require grad, as in ordinary distillation.
"""

from __future__ import annotations

import multiprocessing
import resource

import pytest
import torch

import ldrld_kernels as lk
import reference

# (rows, C, k): ImageNet, and a small LLM-vocabulary batch.
SHAPES = {"imagenet-256x1000": (256, 1000, 7), "vocab-8x131072": (8, 131072, 7)}


def make_inputs(rows: int, num_classes: int, dtype=torch.float32, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, num_classes, generator=generator) * 3
    teacher = torch.randn(rows, num_classes, generator=generator) * 3
    target = torch.randint(0, num_classes, (rows,), generator=generator)
    return student.to(device, dtype), teacher.to(device, dtype), target.to(device)


def loss_functions():
    return {
        "torch": lambda *a, **kw: lk.ldrld_loss(*a, backend="torch", **kw),
        "reference": reference.ldrld_loss,
    }


def forward_backward(loss_fn, student, teacher, target, k):
    student = student.detach().requires_grad_(True)
    loss = loss_fn(student, teacher, target, k=k)
    (grad,) = torch.autograd.grad(loss, student)
    return grad


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_forward_backward(benchmark, shape, backend):
    rows, num_classes, k = SHAPES[shape]
    student, teacher, target = make_inputs(rows, num_classes)
    benchmark.group = shape
    benchmark.extra_info.update(rows=rows, classes=num_classes, k=k)
    grad = benchmark(forward_backward, loss_functions()[backend], student, teacher, target, k)
    assert grad.shape == student.shape and grad.isfinite().all()


def _peak_in_child(backend: str, shape: str, queue) -> None:
    rows, num_classes, k = SHAPES[shape]
    inputs = make_inputs(rows, num_classes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    forward_backward(loss_functions()[backend], *inputs, k=k)
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)


def cpu_peak_bytes(backend: str, shape: str) -> int:
    """Growth of the peak resident memory of a fresh process over its first forward + backward,
    after the inputs exist: a CPU stand-in for ``torch.cuda.max_memory_allocated`` (a second
    run in the same process would reuse pages that the allocator kept and show less)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_peak_in_child, args=(backend, shape, queue))
    child.start()
    peak = queue.get(timeout=600)
    child.join()
    return peak


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_memory(benchmark, backend):
    shape = "vocab-8x131072"
    rows, num_classes, _ = SHAPES[shape]
    peak = benchmark.pedantic(cpu_peak_bytes, args=(backend, shape), rounds=1, iterations=1)
    benchmark.extra_info["peak_bytes"] = peak
    input_bytes = rows * num_classes * 4
    print(f"\n{backend} {shape}: peak memory {peak / 2**20:.1f} MiB "
          f"= {peak / input_bytes:.1f} x one float32 logit tensor")
    assert peak > 0
