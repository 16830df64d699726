"""The ``ldrld`` command.

``ldrld check`` compares every backend available here with the float64 reference on fresh
random logits, against the teacher's logits and against its top-K (a sparse teacher), and
prints a PASS/FAIL table; on a machine without a GPU the Triton kernels run
under the Triton interpreter (TRITON_INTERPRET=1). ``ldrld bench`` times forward + backward
of the backends over a sweep of shapes (see ``ldrld_kernels.tools.bench``). ``ldrld profile`` counts
the sm_90 machine code of every kernel without a GPU (see ``ldrld_kernels.tools.profile``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from ldrld_kernels.backends import available
from ldrld_kernels.config import BACKENDS
from ldrld_kernels.sparse import SparseTeacher
from ldrld_kernels.tools import bench, profile
from ldrld_kernels.tools.check import compare_with_reference
from ldrld_kernels.validation import MAX_K

# (rows, C, k): small enough to finish in seconds on a laptop CPU, odd sizes on purpose.
CHECK_SHAPES = ((4, 37, 3), (3, 1000, 7), (2, 4099, 16))
CHECK_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}
DEFAULT_CHECK_DTYPES = ("float64", "float32", "bfloat16")


def _parse_shape(text: str) -> tuple[int, int, int]:
    """``ROWSxCxK`` with at least one row and a k that ``ldrld_loss`` accepts for C."""
    try:
        rows, classes, k = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must be ROWSxCxK, e.g. 4x37x3, got {text!r}") from None
    if rows < 1 or not 2 <= k < classes or k > MAX_K:
        raise argparse.ArgumentTypeError(
            f"shape {text!r}: needs ROWS >= 1 and 2 <= K < C, K <= {MAX_K}")
    return rows, classes, k


def _parse_device(text: str) -> torch.device:
    try:
        return torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}") from None


def _unavailable(device: torch.device) -> str | None:
    """Why ``device`` cannot be used on this machine, or None."""
    if device.type == "cpu":
        return None
    backend = getattr(torch, device.type, None)
    if backend is None or not backend.is_available():
        return f"this PyTorch ({torch.__version__}) has no usable {device.type} device"
    return None


def sparse_listed(num_classes: int, k: int) -> int:
    """The top-K that ``ldrld check`` lists of a teacher row: 4 k, at most C."""
    return min(num_classes, 4 * k)


def run_check(args: argparse.Namespace) -> int:
    device = args.device
    backends = available(device) if args.backend == "all" else [args.backend]
    generator = torch.Generator().manual_seed(args.seed)
    header = f"{'backend':8} {'dtype':9} {'rows x C, k (teacher)':26} {'loss err':>10} " \
             f"{'d student':>10} {'d teacher':>10}  result"
    print(header)
    print("-" * len(header))
    failures = 0
    for rows, classes, k in args.shape or CHECK_SHAPES:
        for dtype_name in args.dtype:
            dtype = CHECK_DTYPES[dtype_name]
            scale = torch.rand((), generator=generator) * 4 + 1
            student = (torch.randn(rows, classes, generator=generator) * scale).to(dtype)
            teacher = (torch.randn(rows, classes, generator=generator) * scale).to(dtype)
            target = torch.randint(0, classes, (rows,), generator=generator)
            target[0] = -100
            # the teacher's logits, and its top-K as a sparse teacher (log-probabilities in
            # float32, float64 for float64 logits)
            listed = sparse_listed(classes, k)
            teachers = ((teacher.to(device), "logits"),
                        (SparseTeacher(*(x.to(device) for x in SparseTeacher.from_logits(
                            teacher, listed))), f"top-{listed}"))
            for backend in backends:
                if backend == "triton" and dtype == torch.float64:
                    continue
                for given, label in teachers:
                    result = compare_with_reference(
                        student.to(device), given, target.to(device), backend=backend,
                        generator=generator, k=k, temperature=4.0, alpha=10.5, beta=7.0)
                    failures += not result.passed
                    shape = f"{rows} x {classes}, {k} ({label})"
                    d_teacher = f"{result.teacher_grad_err:10.2e}" if label == "logits" \
                        else f"{'-':>10}"
                    print(f"{backend:8} {dtype_name:9} {shape:26} {result.loss_err:10.2e} "
                          f"{result.student_grad_err:10.2e} {d_teacher}  "
                          f"{'PASS' if result.passed else 'FAIL'}", flush=True)
    print(f"{failures} failed" if failures else "all passed")
    return 1 if failures else 0


def _parse_linear_shape(text: str) -> tuple[int, int, int]:
    """``ROWSxHxC``: rows, hidden size, classes, each at least 1 (C above k = 7)."""
    try:
        rows, hidden, classes = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must be ROWSxHxC, e.g. 4096x512x32000, got {text!r}") from None
    if rows < 1 or hidden < 1 or classes <= 7:
        raise argparse.ArgumentTypeError(f"shape {text!r}: needs ROWS, H >= 1 and C > 7")
    return rows, hidden, classes


def run_fused_linear(args: argparse.Namespace) -> int:
    device = args.device
    shape: tuple[int, int, int] = args.fused_linear or bench.FUSED_LINEAR_SHAPES[
        "cuda" if device.type == "cuda" else "cpu"]
    # (bfloat16 as a model runs on a GPU; float32 on CPU, where bfloat16 matmuls are slow)
    dtypes = args.dtypes_given or ["bfloat16" if device.type == "cuda" else "float32"]
    for dtype in dtypes:
        print(bench.format_fused_linear(bench.run_fused_linear(
            *shape, bench.DTYPES[dtype], device, budget_s=0.0)))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    device = args.device
    if args.fused_linear is not False:
        return run_fused_linear(args)
    known = {shape.name: shape for shape in bench.SHAPES + bench.QUICK_SHAPES}
    if args.shapes:
        shapes = [known[name] for name in args.shapes]
    else:
        shapes = list(bench.QUICK_SHAPES if args.quick else bench.SHAPES)
    backends = args.backends or bench.available_backends(device, args.interpret)
    report = bench.run_bench(shapes, args.dtypes_given or list(bench.DTYPES), backends,
                             device, args.quick,
                             log=lambda line: print(line, file=sys.stderr, flush=True),
                             time_limit=args.time_limit)
    print(bench.format_table(report))
    if args.out:
        # the time of day too, so that a rerun never overwrites the results of that day
        stamp = datetime.now(timezone.utc).strftime("%H%M%S")
        name = args.name or re.sub(r"[^A-Za-z0-9._-]+", "-",
                                   f"{report.card}-{report.date}-{stamp}")
        for path in bench.write_outputs(report, Path(args.out), name):
            print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldrld", description=__doc__)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="compare the backends with the float64 reference")
    check.add_argument("--backend", choices=("all", *BACKENDS[1:]), default="all",
                       help="default: every backend that runs here")
    check.add_argument("--dtype", nargs="+", choices=tuple(CHECK_DTYPES),
                       default=list(DEFAULT_CHECK_DTYPES),
                       help=f"default: {' '.join(DEFAULT_CHECK_DTYPES)}")
    default_shapes = " ".join(f"{rows}x{c}x{k}" for rows, c, k in CHECK_SHAPES)
    check.add_argument("--shape", nargs="+", type=_parse_shape, metavar="ROWSxCxK",
                       help=f"shapes to check (default: {default_shapes})")
    check.add_argument("--device", type=_parse_device, default=default_device)
    check.add_argument("--seed", type=int, default=None,
                       help="seed of the random logits (default: fresh each run)")
    check.set_defaults(run=run_check)

    bench_parser = commands.add_parser("bench",
                                       help="time forward + backward over a sweep of shapes")
    bench_parser.add_argument("--quick", action="store_true",
                              help="two small shapes, short timings (about 20 s on a 2-core CPU)")
    shape_names = list(dict.fromkeys(shape.name for shape in bench.SHAPES + bench.QUICK_SHAPES))
    bench_parser.add_argument("--shapes", nargs="+", metavar="NAME", choices=shape_names,
                              help=f"shapes by name: {', '.join(shape_names)}")
    bench_parser.add_argument("--dtypes", nargs="+", choices=tuple(bench.DTYPES),
                              dest="dtypes_given",
                              help=f"default: {' '.join(bench.DTYPES)} (with --fused-linear: "
                                   "bfloat16 on a GPU, float32 on CPU)")
    bench_parser.add_argument(
        "--fused-linear", nargs="?", const=None, default=False, type=_parse_linear_shape,
        metavar="ROWSxHxC",
        help="time and peak memory of ldrld_fused_linear_loss against materializing the "
             "logits, at ROWSxHxC (default: 4096x512x32000 on CPU, 8192x4096x128256 on a GPU)")
    bench_parser.add_argument("--backends", nargs="+", choices=bench.BACKENDS,
                              help="default: all that run here (on CPU: torch and reference)")
    bench_parser.add_argument("--interpret", action="store_true",
                              help="on CPU, include the Triton kernels under the interpreter")
    bench_parser.add_argument("--out", metavar="DIR", help="write NAME.json/.csv/.md/.png there")
    bench_parser.add_argument("--name",
                              help="file name stem (default: <card>-<date>-<HHMMSS>, UTC)")
    bench_parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                              help="skip the cases that would start after this many seconds")
    bench_parser.add_argument("--device", type=_parse_device, default=default_device)
    bench_parser.set_defaults(run=run_bench)

    profile_parser = commands.add_parser(
        "profile", help="count the sm_90 machine code of every kernel, without a GPU")
    profile.add_arguments(profile_parser)
    profile_parser.set_defaults(run=profile.run, device=torch.device("cpu"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reason = _unavailable(args.device)
    if reason is not None:
        print(f"ldrld {args.command}: error: --device {args.device}: {reason}", file=sys.stderr)
        return 2
    interpret = args.command == "check" or getattr(args, "interpret", False)
    if args.device.type == "cpu" and interpret:
        # chosen before any kernel module is imported; an explicit setting wins
        os.environ.setdefault("TRITON_INTERPRET", "1")
        # the interpreter runs kernels in numpy, which warns on what the kernels compute and
        # then discard (-inf - -inf, 2^x past the float range, log2 of 0 for absent rows)
        for message in ("invalid value encountered", "overflow encountered",
                        "divide by zero encountered"):
            warnings.filterwarnings("ignore", message, RuntimeWarning)
    if args.command == "check":
        if args.seed is None:
            args.seed = torch.seed() % 2**31
        print(f"ldrld check: torch {torch.__version__}, device {args.device}, seed {args.seed}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
