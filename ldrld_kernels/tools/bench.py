"""``ldrld bench``: forward + backward of every backend over a sweep of shapes.

Each case times one training-step use of the loss: the student requires grad, the teacher
does not; forward, then ``torch.autograd.grad`` of the loss with respect to the student.
The compulsory bytes of such a step are one read of the student and of the teacher logits and
one write of the student gradient; GB/s and the fraction of the device-to-device copy
bandwidth (measured in the same run, counting bytes read and written) are on those bytes.
Speedups are against the reference (released-code style, group by group) and against
``torch.compile`` of the vectorized PyTorch path, measured in the same run.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

import torch

# (reference: installed from reference/ by setuptools' package-dir, which mypy cannot see)
from ldrld_kernels import __version__, backends, config, reference  # type: ignore[attr-defined]
from ldrld_kernels.api import ldrld_loss


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


def compulsory_bytes(rows: int, classes: int, student_dtype: torch.dtype,
                     teacher_dtype: torch.dtype) -> int:
    """Read the student and the teacher logits once, write the student gradient once."""
    student = torch.empty((), dtype=student_dtype).element_size()
    teacher = torch.empty((), dtype=teacher_dtype).element_size()
    return rows * classes * (2 * student + teacher)


@dataclass
class Result:
    shape: str
    rows: int
    classes: int
    k: int
    dtype: str
    backend: str
    status: str = "ok"
    median_ms: float | None = None
    gbps: float | None = None
    copy_fraction: float | None = None
    speedup_vs_reference: float | None = None
    speedup_vs_compile: float | None = None
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


def time_ms(fn, device: torch.device, budget_s: float) -> float:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` on a GPU, else repeats
    within ``budget_s`` (at least three)."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=max(100, int(budget_s * 1000)),
                                       return_mode="median")
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 100):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def copy_bandwidth_gbps(device: torch.device, budget_s: float) -> float:
    """Device-to-device copy bandwidth, bytes read plus bytes written."""
    nbytes = (1 << 30) if device.type == "cuda" else (1 << 27)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, budget_s)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def peak_memory_bytes(backend: str, shape: Shape, device: torch.device,
                      inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> int | None:
    """Peak memory of one step beyond its inputs (``step_peak_memory_bytes``)."""
    return step_peak_memory_bytes(
        functools.partial(training_step, loss_function(backend), *inputs, shape.k), device)


def step_peak_memory_bytes(step, device: torch.device) -> int | None:
    """Peak memory of ``step()`` beyond what exists before it: the CUDA allocator's peak on a
    GPU, the PyTorch profiler's memory timeline on CPU (None where the profiler cannot give
    it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    try:
        with _without_profiler_log(), profile(activities=[ProfilerActivity.CPU],
                                              profile_memory=True, record_shapes=True,
                                              with_stack=True) as prof:
            step()
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            path = os.path.join(folder, "memory.json.gz")
            prof.export_memory_timeline(path, device="cpu")
            with gzip.open(path, "rt") as handle:
                _, sizes = json.load(handle)
    except (AttributeError, NotImplementedError, RuntimeError, OSError, ValueError):
        return None  # the timeline is a deprecated profiler feature that PyTorch may drop
    totals = [sum(by_category) for by_category in sizes]
    return max(totals) - totals[0] if totals else None


@contextlib.contextmanager
def _without_profiler_log():
    """Drop the ``USDT:... profiler_start`` / ``profiler_stop`` lines that some CPU builds of
    PyTorch write to the process's stderr (file descriptor 2, below Python, so
    ``sys.stderr`` cannot filter them) on every profiler run; anything else written there
    meanwhile is passed on."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not (line.startswith("USDT:") and "profiler_st" in line)]
            if kept:
                sys.stderr.write("".join(kept))


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def skip_reason(backend: str, shape: Shape, device: torch.device) -> str | None:
    elements = shape.rows * shape.classes
    if backend == "reference" and elements > REFERENCE_MAX_ELEMENTS:
        return "skipped: reference too slow at this size"
    needed = WORKSPACE_TENSORS[backend] * elements * 4
    free = free_memory_bytes(device)
    if needed > 0.8 * free:
        return f"skipped: needs ~{needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    return None


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "ldrld_kernels": __version__}
    try:
        import triton

        found["triton"] = triton.__version__
    except ImportError:
        found["triton"] = None
    return found


def available_backends(device: torch.device, interpret: bool) -> list[str]:
    """triton where it compiles (or, with ``interpret``, under the interpreter), the torch
    path, ``torch.compile`` of it on a GPU, and the reference."""
    names = [name for name in backends.available(device)
             if name != "triton" or device.type == "cuda" or interpret]
    if device.type == "cuda":
        names.append("torch.compile")
    return [*names, "reference"]


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
    total = len(shapes) * len(dtype_names) * len(backends)
    for shape in shapes:
        for dtype_name in dtype_names:
            dtype = DTYPES[dtype_name]
            inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
            cases = []
            for backend in backends:
                result = Result(shape.name, shape.rows, shape.classes, shape.k, dtype_name,
                                backend)
                cases.append(result)
                reason = skip_reason(backend, shape, device)
                if deadline is not None and time.monotonic() > deadline:
                    reason = "skipped: time limit"
                if reason is None:
                    try:
                        inputs = inputs or make_inputs(shape, dtype, device)
                        fn = functools.partial(training_step, loss_function(backend), *inputs,
                                               shape.k)
                        result.median_ms = time_ms(fn, device, budget)
                        result.peak_memory_bytes = peak_memory_bytes(backend, shape, device,
                                                                     inputs)
                    except torch.cuda.OutOfMemoryError:
                        reason = "skipped: out of memory"
                        torch.cuda.empty_cache()
                if reason is not None:
                    result.status = reason
                    result.median_ms = None
                else:
                    assert result.median_ms is not None  # (measured: no reason to skip)
                    nbytes = compulsory_bytes(shape.rows, shape.classes, dtype, dtype)
                    result.gbps = nbytes / (result.median_ms * 1e-3) / 1e9
                    result.copy_fraction = result.gbps / report.copy_gbps
                done = len(report.results) + len(cases)
                timing = f"{result.median_ms:.3f} ms" if result.median_ms else result.status
                log(f"[{done}/{total}] {shape.name} ({shape.rows} x {shape.classes}) "
                    f"{dtype_name} {backend}: {timing}")
            _add_speedups(cases)
            report.results.extend(cases)
            del inputs
    return report


def _add_speedups(cases: list[Result]) -> None:
    by_backend = {case.backend: case.median_ms for case in cases}
    for case in cases:
        if case.median_ms is None:
            continue
        if reference_ms := by_backend.get("reference"):
            case.speedup_vs_reference = reference_ms / case.median_ms
        if compile_ms := by_backend.get("torch.compile"):
            case.speedup_vs_compile = compile_ms / case.median_ms


COLUMNS = ("shape", "rows x C", "dtype", "backend", "ms", "GB/s", "% copy", "x ref",
           "x compile", "peak MiB")


def table_rows(report: Report) -> list[list[str]]:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    rows = []
    for r in report.results:
        rows.append([
            r.shape, f"{r.rows} x {r.classes}", r.dtype, r.backend,
            fmt(r.median_ms, ".3f") if r.status == "ok" else r.status,
            fmt(r.gbps, ".1f"), fmt(None if r.copy_fraction is None else 100 * r.copy_fraction,
                                   ".0f"),
            fmt(r.speedup_vs_reference, ".1f"), fmt(r.speedup_vs_compile, ".2f"),
            fmt(None if r.peak_memory_bytes is None else r.peak_memory_bytes / 2**20, ".1f"),
        ])
    return rows


def format_table(report: Report) -> str:
    rows = [list(COLUMNS)] + table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_markdown(report: Report) -> str:
    header = (f"{report.card}, {report.date}; torch {report.versions['torch']}, triton "
              f"{report.versions['triton']}; device-to-device copy "
              f"{report.copy_gbps:.1f} GB/s; forward + backward, k = 7\n\n")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    return header + "\n".join(lines) + "\n"


def write_outputs(report: Report, out_dir: Path, name: str) -> list[Path]:
    """``name``.json, .csv, .md and, with matplotlib installed, .png under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(asdict(report), indent=2))
    written.append(path)
    path = out_dir / f"{name}.csv"
    with path.open("w", newline="") as handle:
        fields = list(asdict(report.results[0]).keys()) if report.results else []
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for result in report.results:
            writer.writerow(asdict(result))
    written.append(path)
    path = out_dir / f"{name}.md"
    path.write_text(format_markdown(report))
    written.append(path)
    png = _plot(report, out_dir / f"{name}.png")
    if png is not None:
        written.append(png)
    return written


def _plot(report: Report, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'ldrld-kernels[bench]'): no plot",
              file=sys.stderr)
        return None
    figure, axes = plt.subplots(figsize=(8, 5))
    for backend in dict.fromkeys(r.backend for r in report.results):
        for dtype in dict.fromkeys(r.dtype for r in report.results):
            points = sorted((r.classes, r.gbps) for r in report.results
                            if r.backend == backend and r.dtype == dtype and r.gbps)
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", label=f"{backend} {dtype}")
    axes.axhline(report.copy_gbps, color="grey", linestyle="--", label="device copy")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("classes C")
    axes.set_ylabel("GB/s on the compulsory bytes")
    axes.set_title(f"LDRLD forward + backward, {report.card}")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ---- Fused linear (ldrld bench --fused-linear) ----------------------------------------------

# (rows, hidden size, classes): a CPU-sized LM batch, and Llama-3's head on a GPU
FUSED_LINEAR_SHAPES = {"cpu": (4096, 512, 32000), "cuda": (8192, 4096, 128256)}


def fused_linear_inputs(rows: int, hidden: int, classes: int, dtype: torch.dtype,
                        device: torch.device, seed: int = 0):
    """Hidden states and output layers of a student and a teacher of the same hidden size,
    logits of standard deviation about 3, and targets."""
    generator = torch.Generator().manual_seed(seed)
    h_s, h_t = (torch.randn(rows, hidden, generator=generator) for _ in range(2))
    w_s, w_t = (torch.randn(classes, hidden, generator=generator) * (3 / hidden**0.5)
                for _ in range(2))
    target = torch.randint(0, classes, (rows,), generator=generator)
    return (*(x.to(device, dtype) for x in (h_s, w_s, h_t, w_t)), target.to(device))


def fused_linear_step(variant: str, h_s, w_s, h_t, w_t, target, k: int = 7):
    """A training step of the student's output layer: the loss of the hidden states and
    the layers, and its gradients for the student's hidden states and weight; the logits
    materialized and passed to ``ldrld_loss``, or ``ldrld_fused_linear_loss``."""
    from ldrld_kernels.fused_linear import ldrld_fused_linear_loss

    h_s, w_s = (x.detach().requires_grad_(True) for x in (h_s, w_s))
    if variant == "fused-linear":
        loss = ldrld_fused_linear_loss(h_s, w_s, h_t, w_t, target, k=k)
    else:
        loss = ldrld_loss(h_s @ w_s.T, h_t @ w_t.T, target, k=k)
    return torch.autograd.grad(loss, (h_s, w_s))


def run_fused_linear(rows: int, hidden: int, classes: int, dtype: torch.dtype,
                     device: torch.device, budget_s: float) -> list[dict]:
    """Time and peak memory of a step with the logits materialized and with the fused-linear
    loss, on the same inputs."""
    inputs = fused_linear_inputs(rows, hidden, classes, dtype, device)
    results = []
    for variant in ("materialized", "fused-linear"):
        step = functools.partial(fused_linear_step, variant, *inputs)
        peak = step_peak_memory_bytes(step, device)
        results.append({"variant": variant, "rows": rows, "hidden": hidden, "classes": classes,
                        "dtype": str(dtype).removeprefix("torch."),
                        "ms": time_ms(step, device, budget_s),
                        "peak_mib": None if peak is None else peak / 2**20})
    return results


def format_fused_linear(results: list[dict]) -> str:
    lines = ["variant        rows  hidden  classes  dtype       ms  peak MiB"]
    for r in results:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"{r['variant']:<13} {r['rows']:>5} {r['hidden']:>7} {r['classes']:>8}  "
                     f"{r['dtype']:<8} {r['ms']:>7.0f} {peak:>9}")
    peaks = [r["peak_mib"] for r in results]
    if None not in peaks and peaks[1] > 0:
        lines.append(f"peak memory, materialized / fused-linear: {peaks[0] / peaks[1]:.1f}x")
    return "\n".join(lines)
