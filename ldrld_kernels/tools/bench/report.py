"""The bench's report: its table (text and Markdown) and its files (JSON, CSV, Markdown and a
plot of GB/s against C)."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ldrld_kernels.tools.bench.sweep import Report

COLUMNS = ("shape", "rows x C", "dtype", "backend", "teacher", "MB", "ms", "GB/s", "% copy",
           "x ref", "x compile", "x logits", "peak MiB")


def table_rows(report: Report) -> list[list[str]]:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    rows = []
    for r in report.results:
        rows.append([
            r.shape, f"{r.rows} x {r.classes}", r.dtype, r.backend, r.teacher,
            fmt(None if r.compulsory_bytes is None else r.compulsory_bytes / 1e6, ".1f"),
            fmt(r.median_ms, ".3f") if r.status == "ok" else r.status,
            fmt(r.gbps, ".1f"), fmt(None if r.copy_fraction is None else 100 * r.copy_fraction,
                                   ".0f"),
            fmt(r.speedup_vs_reference, ".1f"), fmt(r.speedup_vs_compile, ".2f"),
            fmt(r.speedup_vs_logits, ".2f"),
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
            for teacher in dict.fromkeys(r.teacher for r in report.results):
                points = sorted((r.classes, r.gbps) for r in report.results
                                if r.backend == backend and r.dtype == dtype
                                and r.teacher == teacher and r.gbps)
                label = f"{backend} {dtype}" + ("" if teacher == "logits" else " sparse")
                if points:
                    axes.plot(*zip(*points, strict=True), marker="o", label=label)
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
