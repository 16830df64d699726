"""Calibrate ``ldrld profile`` against the hardware counters, on a lent GPU with ``ncu``.

    ncu --clock-control none --csv --metrics <METRICS> python3 benchmarks/calibrate.py run \
        > ncu.csv
    python3 benchmarks/calibrate.py report ncu.csv

``run`` makes, for each shape, the launches of one training-step call (forward, then the
backward of ``loss.backward()``) on random logits; ``ncu`` counts each launch. ``report``
compiles the same calls with ``ldrld profile`` and prints, per kernel, the measured DRAM
throughput, executed instructions per element (warp instructions x 32 / elements) and
issue-slot utilization next to the predicted instructions per element. ``benchmarks/
gpu_check.sh`` runs both.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

import torch

# (rows, C): one shape of each kernel family, small enough for ncu's replays to be quick
SHAPES = ((4096, 8192), (1024, 131072))
DTYPE = "bfloat16"
METRICS = (
    "gpu__time_duration.sum",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "smsp__inst_executed.sum",
    "smsp__issue_active.avg.pct_of_peak_sustained_active",
)


def _call(rows: int, classes: int) -> None:
    from ldrld_kernels import triton_common, triton_fused
    from ldrld_kernels.config import LossConfig

    generator = torch.Generator(device="cuda").manual_seed(0)
    student = torch.randn(rows, classes, device="cuda", generator=generator).to(torch.bfloat16)
    teacher = torch.randn(rows, classes, device="cuda", generator=generator).to(torch.bfloat16)
    target = torch.randint(0, classes, (rows,), device="cuda", generator=generator)
    scale = torch.ones((), device="cuda")
    _, _, grad, _ = triton_fused.ldrld_rows(student, teacher, target, LossConfig(), True,
                                            False, scale)
    triton_common.scale_in_place(grad, scale)
    torch.cuda.synchronize()


def run() -> int:
    for rows, classes in SHAPES:
        _call(rows, classes)
    return 0


def _launches(path: str) -> list[dict[str, str]]:
    """ncu's CSV (details page, one row per kernel and metric) as one dict per launch, in
    launch order."""
    by_id: dict[str, dict[str, str]] = defaultdict(dict)
    with open(path, newline="") as handle:
        lines = [line for line in handle if line.startswith('"')]  # drop ncu's own log lines
    for row in csv.DictReader(lines):
        launch = by_id[row["ID"]]
        launch["kernel"] = row["Kernel Name"]
        launch[row["Metric Name"]] = row["Metric Value"].replace(",", "")
    return [by_id[key] for key in sorted(by_id, key=int)]


def report(path: str) -> int:
    from ldrld_kernels import profile

    calls = [profile.profile_call(rows, classes, DTYPE) for rows, classes in SHAPES]
    ours = {kernel.name for call in calls for kernel in call.kernels}
    # ncu also counted PyTorch's own kernels (random inputs): keep the project's launches
    measured = [launch for launch in _launches(path)
                if any(name in launch["kernel"] for name in ours)]
    print(f"{'shape':16} {'kernel':22} {'DRAM GB':>8} {'DRAM %':>7} {'issue %':>8} "
          f"{'instr/el measured':>18} {'predicted':>10}")
    position = 0
    for call in calls:
        rows, classes = call.rows, call.classes
        for kernel in call.kernels:
            if position >= len(measured):
                print(f"ncu recorded {len(measured)} launches; expected more")
                return 1
            launch = measured[position]
            position += 1
            if kernel.name not in launch["kernel"]:
                print(f"launch {position}: ncu saw {launch['kernel']}, expected {kernel.name}")
                return 1

            per_element = _metric(launch, "smsp__inst_executed.sum")
            if per_element is not None:  # warp instructions, 32 threads each
                per_element *= 32 / (rows * classes)
            read = _metric(launch, "dram__bytes_read.sum")
            written = _metric(launch, "dram__bytes_write.sum")
            dram_gb = None if read is None or written is None else (read + written) / 1e9
            dram_pct = _metric(launch, "dram__throughput.avg.pct_of_peak_sustained_elapsed")
            issue_pct = _metric(launch, "smsp__issue_active.avg.pct_of_peak_sustained_active")
            print(f"{f'{rows}x{classes}':16} {kernel.name.strip('_'):22} "
                  f"{_fmt(dram_gb, '.3f'):>8} {_fmt(dram_pct, '.1f'):>7} "
                  f"{_fmt(issue_pct, '.1f'):>8} {_fmt(per_element, '.1f'):>18} "
                  f"{kernel.instructions_per_element:10.1f}")
    return 0


def _metric(launch: dict[str, str], name: str) -> float | None:
    value = launch.get(name)
    return float(value) if value not in (None, "", "n/a") else None


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "run":
        sys.exit(run())
    if len(sys.argv) == 3 and sys.argv[1] == "report":
        sys.exit(report(sys.argv[2]))
    if len(sys.argv) == 2 and sys.argv[1] == "metrics":
        print(",".join(METRICS))
        sys.exit(0)
    sys.exit(f"usage: {sys.argv[0]} run | report NCU.csv | metrics")
