"""Compiles kernels for sm_90 through ``ldrld_kernels.tools.profile`` and prints what it measured,
as JSON. ``tests/tools/test_profile.py`` runs this in a process of its own: the test session runs
the Triton interpreter, which replaces the compiler.

Two sets: small kernels whose machine code is known in advance (the instrument's own tests),
and the LDRLD kernels over the variants the launchers choose between (dtypes, k, target,
rank_by, gradients), which must all compile with the Triton installed.
"""

import contextlib
import dataclasses
import importlib.util
import json
import linecache
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import triton
import triton.language as tl

from ldrld_kernels.config import LossConfig
from ldrld_kernels.tools import profile
from ldrld_kernels.tools.profile import sass


@triton.jit
def _copy_kernel(dst_ptr, src_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=mask), mask=mask)


@triton.jit
def _loop_kernel(out_ptr, x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    acc = tl.load(x_ptr + offsets)
    for _ in range(n):  # trips: n
        acc = acc * acc + 1.0
    tl.store(out_ptr + offsets, acc)


@triton.jit
def _untagged_loop_kernel(out_ptr, x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    acc = tl.load(x_ptr + offsets)
    for _ in range(n):
        acc = acc * acc + 1.0
    tl.store(out_ptr + offsets, acc)


@triton.jit
def _spill_kernel(out_ptr, x_ptr, BLOCK: tl.constexpr):
    # three vectors of BLOCK alive at once in one warp: 3 x 512 values per thread
    offsets = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets)
    y = tl.exp(x)
    z = tl.load(x_ptr + BLOCK + offsets)
    tl.store(out_ptr + offsets, x * z / tl.sum(y, axis=0) + y)


def _one(kernel, grid, *args, **kwargs) -> profile.Launch:
    with profile.compile_only() as launches:
        kernel[grid](*args, **kwargs)
    (launch,) = launches
    return launch


# A kernel module of its own, to import from two places: the same source at two paths.
MOVED_SOURCE = """import triton
import triton.language as tl


@triton.jit
def _moved_loop_kernel(out_ptr, x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    acc = tl.load(x_ptr + offsets)
    for _ in range(n):  # trips: n
        acc = acc * acc + 1.0
    tl.store(out_ptr + offsets, acc)
"""


@contextlib.contextmanager
def _triton_cache(path: Path):
    previous = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_CACHE_DIR"]
        else:
            os.environ["TRITON_CACHE_DIR"] = previous


def _profile_moved(path: Path, module_name: str):
    """The moved loop kernel imported from ``path``: (its instructions per element or the
    profiler's error, the paths its binary's line information names)."""
    linecache.clearcache()  # each step as in a process of its own
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = sys.modules[module_name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = torch.empty(128)
    launch = _one(module._moved_loop_kernel, (1,), src, src, 10, BLOCK=128, num_warps=4)
    text = profile.read_cubin("nvdisasm", ["-c", "-g"], launch.compiled.asm["cubin"])
    named = sorted({match["file"] for match in sass.SOURCE.finditer(text)})
    try:
        counted = profile.profile_launch(launch, 1, 128).instructions_per_element
    except ValueError as error:
        counted = str(error)
    return counted, named


def moved_source_case() -> dict:
    """One kernel profiled from a checkout, then from the same source at another path with the
    same Triton cache (the binary comes from the cache and names the first path): after the
    first checkout moved away, and with a changed file back at the first path."""
    with tempfile.TemporaryDirectory() as tmp, _triton_cache(Path(tmp) / "cache"):
        first = Path(tmp) / "first" / "moved_kernel.py"
        second = Path(tmp) / "second" / "moved_kernel.py"
        first.parent.mkdir()
        first.write_text(MOVED_SOURCE)
        counted_first, _ = _profile_moved(first, "moved_kernel_first")
        shutil.move(first.parent, second.parent)
        counted_moved, named_moved = _profile_moved(second, "moved_kernel_moved")
        first.parent.mkdir()
        # (a line longer, and another trip count: read there, the loop would count double)
        first.write_text("# another version\n" + MOVED_SOURCE.replace("trips: n", "trips: 2 * n"))
        counted_changed, named_changed = _profile_moved(second, "moved_kernel_changed")
        return {"first": counted_first, "moved": counted_moved, "changed": counted_changed,
                "cached_from_first": str(first) in named_moved and str(first) in named_changed
                and str(second) not in named_moved + named_changed}


def instrument_cases() -> dict:
    rows, classes = 64, 4096
    src = torch.empty(rows * classes)
    dst = torch.empty_like(src)
    out = {}
    launch = _one(_copy_kernel, (rows * classes // 1024,), dst, src, rows * classes, BLOCK=1024,
                  num_warps=4)
    out["copy"] = dataclasses.asdict(profile.profile_launch(launch, rows, classes))
    for trips in (10, 50, 100):
        launch = _one(_loop_kernel, (1,), dst, src, trips, BLOCK=128, num_warps=4)
        out[f"loop{trips}"] = dataclasses.asdict(profile.profile_launch(launch, 1, 128))
    launch = _one(_untagged_loop_kernel, (1,), dst, src, 10, BLOCK=128, num_warps=4)
    try:
        profile.profile_launch(launch, 1, 128)
        out["untagged"] = "no error"
    except ValueError as error:
        out["untagged"] = str(error)
    launch = _one(_spill_kernel, (1,), dst, src, BLOCK=16384, num_warps=1)
    out["spill"] = dataclasses.asdict(profile.profile_launch(launch, 1, 16384))
    out["moved"] = moved_source_case()
    return out


# (rows, C, k, dtypes, target, rank_by, gradients, sharded, listed): every branch of the
# launchers
LDRLD_CASES = [
    (4, 1000, 7, (torch.bfloat16, torch.bfloat16), True, "student", (True, False), False, 0),
    (4, 37, 2, (torch.float32, torch.bfloat16), False, "teacher", (True, True), False, 0),
    (2, 16384, 64, (torch.float16, torch.float16), True, "student", (False, False), False, 0),
    (2, 131072, 7, (torch.bfloat16, torch.bfloat16), True, "student", (True, False), False, 0),
    (2, 20000, 16, (torch.float32, torch.float32), False, "teacher", (True, True), False, 0),
    (3, 70001, 16, (torch.float32, torch.bfloat16), False, "teacher", (True, True), False, 0),
    (8, 3001, 7, (torch.bfloat16, torch.bfloat16), True, "student", (True, False), True, 0),
    # against a sparse teacher's top-K (listed > 0), ranked either way, whole rows and split
    (4, 1000, 7, (torch.bfloat16, torch.bfloat16), True, "student", (True, False), False, 64),
    (2, 131072, 7, (torch.float32, torch.float32), True, "teacher", (True, False), False, 100),
]


def ldrld_cases() -> list:
    results = []
    for (rows, classes, k, (s_dtype, t_dtype), has_target, rank_by, grads,
         sharded, listed) in LDRLD_CASES:
        student = torch.empty(rows, classes, dtype=s_dtype)
        teacher = torch.empty(rows, classes, dtype=t_dtype)
        target = torch.zeros(rows, dtype=torch.long) if has_target else None
        launches = profile.compile_call(student, teacher, target,
                                        LossConfig(k=k, rank_by=rank_by), *grads,
                                        sharded=sharded, listed=listed)
        profiles = [profile.profile_launch(launch, rows, classes) for launch in launches]
        results.append({"case": f"{rows}x{classes} k={k} {s_dtype}/{t_dtype} {rank_by}"
                                f"{' sharded' if sharded else ''}"
                                f"{f' top-{listed}' if listed else ''}",
                        "kernels": [kernel.name for kernel in profiles],
                        # (ranked by a sparse teacher, the top-k is known: nothing selects)
                        "selects": not (listed and rank_by == "teacher"),
                        # the loops and blocks the profiler found, with their tagged lines
                        "regions": sorted({region for kernel in profiles
                                           for region in kernel.loops})})
        if classes in (1000, 131072):  # whole rows and split ones, on each rows model
            results[-1]["rows_models"] = {
                model: {kernel.name: [kernel.instructions_per_element, kernel.hints]
                        for kernel in (profile.profile_launch(launch, rows, classes,
                                                              rows_model=model)
                                       for launch in launches)}
                for model in profile.ROW_MODELS}
    return results


if __name__ == "__main__":
    json.dump({"triton": triton.__version__, "instrument": instrument_cases(),
               "ldrld": ldrld_cases()}, sys.stdout)
