"""Calibrate ``ldrld profile`` against the hardware counters, on a lent GPU with ``ncu``.

    ncu --clock-control none --csv --metrics <METRICS> python3 benchmarks/calibrate.py run \
        > ncu.csv
    python3 benchmarks/calibrate.py report ncu.csv

``run`` makes, for each shape, the launches of one training-step call (forward, then the
backward of ``loss.backward()``) on random logits; ``ncu`` counts each launch. ``report``
compiles the same calls with ``ldrld profile`` and prints, per call (all its launches: a wide
row's waves launch its kernel many times), the measured time, DRAM bytes and throughput,
executed instructions per element (warp instructions x 32 / elements) and issue-slot
utilization (time-weighted) next to the predicted instructions per element. ``benchmarks/
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
    from ldrld_kernels.config import LossConfig
    from ldrld_kernels.kernels import launcher, scale

    generator = torch.Generator(device="cuda").manual_seed(0)
    student = torch.randn(rows, classes, device="cuda", generator=generator).to(torch.bfloat16)
    teacher = torch.randn(rows, classes, device="cuda", generator=generator).to(torch.bfloat16)
    target = torch.randint(0, classes, (rows,), device="cuda", generator=generator)
    factor = torch.ones((), device="cuda")
    _, _, grad, _ = launcher.ldrld_rows(student, teacher, target, LossConfig(), True, False,
                                        factor)
    scale.scale_in_place(grad, factor)
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
    from ldrld_kernels.tools import profile

    calls = [profile.profile_call(rows, classes, DTYPE) for rows, classes in SHAPES]
    ours = {kernel.name for call in calls for kernel in call.kernels}
    # ncu also counted PyTorch's own kernels (random inputs): keep the project's launches
    measured = [launch for launch in _launches(path)
                if any(name in launch["kernel"] for name in ours)]
    print(f"{'shape':16} {'launches':>8} {'time us':>9} {'DRAM GB':>8} {'DRAM GB/s':>10} "
          f"{'DRAM %':>7} {'issue %':>8} {'instr/el measured':>18} {'predicted':>10}")
    position = 0
    for call in calls:
        count = sum(kernel.launches for kernel in call.kernels)
        launches = measured[position:position + count]
        position += count
        if len(launches) < count:
            print(f"ncu recorded {len(measured)} launches; expected more")
            return 1

        def total(name: str, launches=launches) -> float | None:
            values = [_metric(launch, name) for launch in launches]
            return None if None in values else sum(values)

        def time_weighted(name: str, launches=launches) -> float | None:
            pairs = [(_metric(launch, name), _metric(launch, "gpu__time_duration.sum"))
                     for launch in launches]
            if any(value is None or time is None for value, time in pairs):
                return None
            return sum(value * time for value, time in pairs) / max(sum(t for _, t in pairs),
                                                                    1e-9)

        elements = call.rows * call.classes
        time_ns = total("gpu__time_duration.sum")
        read, written = total("dram__bytes_read.sum"), total("dram__bytes_write.sum")
        moved = None if read is None or written is None else read + written
        per_element = total("smsp__inst_executed.sum")
        if per_element is not None:  # warp instructions, 32 threads each
            per_element *= 32 / elements
        rate = None if moved is None or not time_ns else moved / time_ns
        dram_pct = time_weighted("dram__throughput.avg.pct_of_peak_sustained_elapsed")
        issue_pct = time_weighted("smsp__issue_active.avg.pct_of_peak_sustained_active")
        print(f"{f'{call.rows}x{call.classes}':16} {count:8d} "
              f"{_fmt(None if time_ns is None else time_ns / 1e3, '.1f'):>9} "
              f"{_fmt(None if moved is None else moved / 1e9, '.3f'):>8} "
              f"{_fmt(rate, '.1f'):>10} {_fmt(dram_pct, '.1f'):>7} {_fmt(issue_pct, '.1f'):>8} "
              f"{_fmt(per_element, '.1f'):>18} {call.instructions_per_element:10.1f}")
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
