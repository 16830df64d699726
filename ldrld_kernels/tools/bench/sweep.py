"""The sweep: every (shape, dtype, backend) timed, against the teacher's logits and (the loss's
backends) against its top-K, its GB/s on the compulsory bytes, its share of the copy bandwidth
and its speedups over the baselines measured in the same run."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from ldrld_kernels.sparse import SparseTeacher
from ldrld_kernels.tools.bench.cases import (
    DTYPES,
    SPARSE_BACKENDS,
    SPARSE_LISTED,
    compulsory_bytes,
    loss_function,
    make_inputs,
    peak_memory_bytes,
    skip_reason,
    sparse_teacher,
    training_step,
)
from ldrld_kernels.tools.bench.measure import card_name, copy_bandwidth_gbps, time_ms, versions


@dataclass
class Result:
    shape: str
    rows: int
    classes: int
    k: int
    dtype: str
    backend: str
    teacher: str = "logits"  # or a sparse teacher's "top-K"
    status: str = "ok"
    median_ms: float | None = None
    gbps: float | None = None
    copy_fraction: float | None = None
    speedup_vs_reference: float | None = None
    speedup_vs_compile: float | None = None
    speedup_vs_logits: float | None = None  # a sparse teacher's: the logits' time over its
    compulsory_bytes: int | None = None
    peak_memory_bytes: int | None = None


@dataclass
class Report:
    device: str
    card: str
    date: str
    versions: dict
    copy_gbps: float
    quick: bool
    results: list[Result] = field(default_factory=list)


def run_bench(shapes, dtype_names, backends, device: torch.device, quick: bool,
              log=print, time_limit: float | None = None) -> Report:
    """Time every (shape, dtype, backend); past ``time_limit`` seconds the remaining cases
    are skipped, so that a run under a deadline still reports what it measured."""
    budget = 0.3 if quick else 1.0
    deadline = None if time_limit is None else time.monotonic() + time_limit
    report = Report(device=str(device), card=card_name(device),
                    date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), versions=versions(),
                    copy_gbps=copy_bandwidth_gbps(device, budget), quick=quick)
    log(f"{report.card}: device-to-device copy {report.copy_gbps:.1f} GB/s")
    total = len(shapes) * len(dtype_names) * (
        len(backends) + len([backend for backend in backends if backend in SPARSE_BACKENDS]))
    for shape in shapes:
        for dtype_name in dtype_names:
            dtype = DTYPES[dtype_name]
            inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
            cases = []
            # each backend against the teacher's logits, then (the loss's own backends)
            # against their top-K, in the same run
            plan = [(backend, listed) for backend in backends
                    for listed in ((0, min(SPARSE_LISTED, shape.classes))
                                   if backend in SPARSE_BACKENDS else (0,))]
            for backend, listed in plan:
                result = Result(shape.name, shape.rows, shape.classes, shape.k, dtype_name,
                                backend, f"top-{listed}" if listed else "logits")
                cases.append(result)
                reason = skip_reason(backend, shape, device)
                if deadline is not None and time.monotonic() > deadline:
                    reason = "skipped: time limit"
                if reason is None:
                    try:
                        inputs = inputs or make_inputs(shape, dtype, device)
                        given: tuple[torch.Tensor, torch.Tensor | SparseTeacher,
                                     torch.Tensor] = inputs
                        if listed:
                            given = (inputs[0], sparse_teacher(inputs[1]), inputs[2])
                        fn = functools.partial(training_step, loss_function(backend), *given,
                                               shape.k)
                        result.median_ms = time_ms(fn, device, budget)
                        result.peak_memory_bytes = peak_memory_bytes(backend, shape, device,
                                                                     given)
                    except torch.cuda.OutOfMemoryError:
                        reason = "skipped: out of memory"
                        torch.cuda.empty_cache()
                if reason is not None:
                    result.status = reason
                    result.median_ms = None
                else:
                    assert result.median_ms is not None  # (measured: no reason to skip)
                    nbytes = compulsory_bytes(shape.rows, shape.classes, dtype,
                                              torch.float32 if listed else dtype, listed)
                    result.compulsory_bytes = nbytes
                    result.gbps = nbytes / (result.median_ms * 1e-3) / 1e9
                    result.copy_fraction = result.gbps / report.copy_gbps
                done = len(report.results) + len(cases)
                timing = f"{result.median_ms:.3f} ms" if result.median_ms else result.status
                log(f"[{done}/{total}] {shape.name} ({shape.rows} x {shape.classes}) "
                    f"{dtype_name} {backend} {result.teacher}: {timing}")
            _add_speedups(cases)
            report.results.extend(cases)
            del inputs
    return report


def _add_speedups(cases: list[Result]) -> None:
    """Against the baselines on the teacher's logits; a sparse teacher's also against its
    backend on the logits."""
    by_backend = {case.backend: case.median_ms for case in cases if case.teacher == "logits"}
    for case in cases:
        if case.median_ms is None:
            continue
        if reference_ms := by_backend.get("reference"):
            case.speedup_vs_reference = reference_ms / case.median_ms
        if compile_ms := by_backend.get("torch.compile"):
            case.speedup_vs_compile = compile_ms / case.median_ms
        if case.teacher != "logits" and (logits_ms := by_backend.get(case.backend)):
            case.speedup_vs_logits = logits_ms / case.median_ms
