"""The report of ``ldrld profile``: its tables (text and Markdown), the fallback table, and
the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from ldrld_kernels.kernels import policy
from ldrld_kernels.tools.profile.budgets import BUDGETS, check_budgets, shape_label
from ldrld_kernels.tools.profile.driver import SM_TARGET
from ldrld_kernels.tools.profile.model import DTYPES, CallProfile, profile_call

COLUMNS = ("rows", "C", "dtype", "kernel", "grid", "warps", "regs", "spill B", "smem B", "CTAs/SM",
           "warps/SM", "bar/row", "MUFU/el", "ld bits", "st bits", "instr/el", "HBM B/el",
           "H100 %", "H200 %")


def table_rows(profiles: Sequence[CallProfile]) -> list[list[str]]:
    rows = []
    for call in profiles:
        for kernel in call.kernels:
            rows.append([
                str(call.rows), shape_label(call), call.dtype,
                kernel.name.strip("_"),
                ("" if kernel.launches == 1 else f"{kernel.launches} x ") +
                "x".join(map(str, kernel.grid)), str(kernel.num_warps), str(kernel.registers),
                str(kernel.spill_store_bytes + kernel.spill_load_bytes),
                str(kernel.shared_bytes), str(kernel.resident_ctas),
                str(kernel.resident_warps), f"{kernel.barriers_per_row:.1f}",
                f"{kernel.mufu_per_element:.2f}",
                "/".join(map(str, kernel.load_bits)) or "-",
                "/".join(map(str, kernel.store_bits)) or "-",
                f"{kernel.instructions_per_element:.1f}", "", "", ""])
        rows.append([str(call.rows), shape_label(call), call.dtype,
                     "= call"] + [""] * 11 + [
                     f"{call.instructions_per_element:.1f}",
                     f"{call.hbm_bytes_per_element:.1f}", f"{call.ceiling_h100:.0f}",
                     f"{call.ceiling_h200:.0f}"])
    return rows


def _aligned(columns: Sequence[str], cells: list[list[str]]) -> str:
    rows = [list(columns)] + cells
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) if columns[i] in ("dtype", "kernel") else
                       cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _markdown(columns: Sequence[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def format_table(profiles: Sequence[CallProfile]) -> str:
    return _aligned(COLUMNS, table_rows(profiles))


def format_markdown(profiles: Sequence[CallProfile]) -> str:
    return _markdown(COLUMNS, table_rows(profiles))


def fallback_rate(call: CallProfile) -> float | None:
    """How often the call's exact-selection fallback runs, per program of the kernel that
    selects (None when no kernel of the call has one)."""
    rates = [kernel.hints["exact_selection"] for kernel in call.kernels
             if "exact_selection" in kernel.hints]
    return max(rates) if rates else None


# The rows ``kernels.trips.profile_hints`` simulates its data-dependent counts on
ROW_MODELS = policy.ROW_MODELS
FALLBACK_COLUMNS = ("rows", "C", "dtype", *(f"fallback {m}" for m in ROW_MODELS),
                    *(f"instr/el {m}" for m in ROW_MODELS), "spaced / normal")


def fallback_rows(by_model: Sequence[dict[str, CallProfile]]) -> list[list[str]]:
    """The fallback's rate (per program of the selecting kernel) and the call's instructions
    per element on each of ``ROW_MODELS``: one row per call, from a dict model -> profile."""
    rows = []
    for calls in by_model:
        normal = calls["normal"]
        rates = [fallback_rate(calls[model]) for model in ROW_MODELS]
        counts = [calls[model].instructions_per_element for model in ROW_MODELS]
        rows.append([str(normal.rows), shape_label(normal), normal.dtype,
                     *("-" if rate is None else f"{100 * rate:.2f}%" for rate in rates),
                     *(f"{count:.1f}" for count in counts),
                     f"{counts[-1] / max(counts[0], 1e-9):.2f}"])
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", nargs="+", type=int, metavar="C",
                        help="classes per row (default: the shapes of profile.BUDGETS)")
    parser.add_argument("--rows", type=int, help="rows (default: 4096 with --classes)")
    parser.add_argument("--ranks", type=int,
                        help="vocabulary parallel: profile one rank of this many (C / ranks "
                             "classes each; default: 1 with --classes)")
    parser.add_argument("--dtype", nargs="+", choices=tuple(DTYPES),
                        default=["bfloat16", "float32"])
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--no-target", action="store_true", help="no cross-entropy term")
    parser.add_argument("--teacher-grad", action="store_true",
                        help="the teacher's gradient too (online distillation)")
    parser.add_argument("--listed", type=int, metavar="K",
                        help="against a sparse teacher of K listed classes a row (default: 0, "
                             "teacher logits, with --classes)")
    parser.add_argument("--json", metavar="PATH", help="write the profiles as JSON there")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a budget of profile.BUDGETS is broken (on normal "
                             "rows)")
    parser.add_argument("--rows-model", choices=ROW_MODELS, default="normal",
                        help="the rows the exact-selection fallback's rate is simulated on: "
                             "i.i.d. normal logits (default), the best classes clustered at "
                             "low ids, or spaced LANES x VEC apart (on one thread)")
    parser.add_argument("--fallback", action="store_true",
                        help="instead of the table: the fallback's rate and the call's "
                             "instructions per element on each rows model")


def run(args: argparse.Namespace) -> int:
    import triton

    if args.classes:
        shapes = [(args.rows or 4096, classes, args.ranks or 1, args.listed or 0)
                  for classes in args.classes]
    else:
        shapes = sorted({(rows, classes, ranks, listed)
                         for rows, classes, _, ranks, listed in BUDGETS
                         if args.rows in (None, rows) and args.ranks in (None, ranks)
                         and args.listed in (None, listed)},
                        key=lambda shape: (shape[3], shape[2], shape[1], -shape[0]))
    print(f"ldrld profile: Triton {triton.__version__}, sm_{SM_TARGET}, "
          f"k={args.k}, {'no target' if args.no_target else 'with target'}, "
          f"{'student and teacher' if args.teacher_grad else 'student'} gradient", end="")
    models = ROW_MODELS if args.fallback else (args.rows_model,)
    print(f", {' / '.join(models)} rows" if models != ("normal",) else "", flush=True)
    by_model = [{model: profile_call(rows, classes, dtype, args.k, not args.no_target,
                                     args.teacher_grad, ranks, model, listed)
                 for model in models}
                for rows, classes, ranks, listed in shapes for dtype in args.dtype]
    profiles = [call for calls in by_model for call in calls.values()]
    if args.fallback:
        cells = fallback_rows(by_model)
        print(_markdown(FALLBACK_COLUMNS, cells) if args.markdown
              else _aligned(FALLBACK_COLUMNS, cells))
    else:
        print(format_markdown(profiles) if args.markdown else format_table(profiles))
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(p) for p in profiles],
                                              indent=2))
        print(f"wrote {args.json}")
    if args.check:
        broken = check_budgets(profiles)
        for line in broken:
            print(f"BUDGET BROKEN {line}")
        print(f"budgets: {len(broken)} broken" if broken else "budgets: all held")
        return 1 if broken else 0
    return 0
