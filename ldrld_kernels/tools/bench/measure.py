"""Measuring on the device at hand: median time, copy bandwidth, peak memory of a step, free
memory, and what the machine is (its card and the versions)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

import torch

from ldrld_kernels import __version__


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
