"""pytest-benchmark suite: forward + backward of each backend, with the baselines of
``ldrld bench`` (the reference in the released code's style, the vectorized PyTorch path, and
``torch.compile`` of it on a GPU).

    pytest benchmarks --benchmark-only        # timings; the median is the number to read
    pytest benchmarks --benchmark-disable     # each case once, as a test (what CI runs)

Every case reads the student and the teacher logits and writes the student gradient (the
teacher does not require grad, as in ordinary distillation); ``extra_info`` carries those
compulsory bytes. Cases whose backend cannot run here (Triton and torch.compile without a
GPU) or whose shape does not fit are skipped.
"""

from __future__ import annotations

import functools

import pytest
import torch

from ldrld_kernels.tools import bench

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPES = (
    bench.Shape("imagenet", 256, 1000),
    bench.Shape("vocab-8x131072", 8, 131072),
    bench.Shape("vocab-8k", 4096, 8192),
)
RUNNABLE = bench.available_backends(DEVICE, interpret=False)


def _skip_unless_runnable(backend: str, shape: bench.Shape) -> None:
    if backend not in RUNNABLE:
        pytest.skip(f"{backend} does not run on {DEVICE}")
    reason = bench.skip_reason(backend, shape, DEVICE)
    if reason or (DEVICE.type == "cpu" and shape.rows * shape.classes > 1 << 22):
        pytest.skip(reason or "too large for a CPU run")


@pytest.mark.parametrize("backend", bench.BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
def test_forward_backward(benchmark, shape, backend):
    _skip_unless_runnable(backend, shape)
    student, teacher, target = bench.make_inputs(shape, torch.float32, DEVICE)
    step = functools.partial(bench.training_step, bench.loss_function(backend), student,
                             teacher, target, shape.k)

    def synchronized_step():
        grad = step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return grad

    benchmark.group = shape.name
    benchmark.extra_info["compulsory_bytes"] = bench.compulsory_bytes(
        shape.rows, shape.classes, torch.float32, torch.float32)
    grad = benchmark(synchronized_step)
    assert grad.shape == student.shape and grad.isfinite().all()


def test_torch_path_peak_memory_is_a_fraction_of_the_reference():
    shape = SHAPES[1]
    _skip_unless_runnable("reference", shape)
    inputs = bench.make_inputs(shape, torch.float32, DEVICE)
    peaks = {backend: bench.peak_memory_bytes(backend, shape, DEVICE, inputs)
             for backend in ("torch", "reference")}
    if None in peaks.values():
        pytest.skip("this PyTorch cannot report CPU peak memory")
    logits = shape.rows * shape.classes * 4
    print(f"\npeak memory at {shape.rows} x {shape.classes}: "
          + ", ".join(f"{b} {p / 2**20:.1f} MiB ({p / logits:.1f} x the logits)"
                      for b, p in peaks.items()))
    assert peaks["torch"] < peaks["reference"] / 4
