"""The Hopper issue model: what an SM can issue per cycle and hold resident, and the profile of
a launch and of a call in instructions per logit element (see the package's docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels import policy, trips
from ldrld_kernels.kernels.hardware import HOPPER
from ldrld_kernels.tools.profile.driver import Launch, compile_call
from ldrld_kernels.tools.profile.sass import (
    KernelSource,
    disassemble,
    execution_counts,
    resource_usage,
    where,
)

MULTIPROCESSORS = 132
CLOCK_HZ = 1.98e9
ISSUE_PER_CYCLE = 128  # thread-instructions per SM per cycle (4 schedulers x 32 lanes)
COPY_BANDWIDTH = {"H100": 3.0e12, "H200": 4.3e12}  # measured device-to-device copy, B/s
# Per SM: 64K registers allocated per warp in units of 256, 64 warps, 32 CTAs, 228 KiB of
# shared memory of which each CTA's 1 KiB is reserved by the system.
REGISTERS_PER_SM = 65536
REGISTER_UNIT_PER_WARP = 256
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32
SHARED_PER_SM = 228 * 1024
SHARED_RESERVED_PER_CTA = 1024


def instruction_budget(bytes_per_element: float, card: str) -> float:
    """Thread-instructions per element that one SM-second affords at the card's copy speed."""
    issue_rate = ISSUE_PER_CYCLE * MULTIPROCESSORS * CLOCK_HZ
    return issue_rate * bytes_per_element / COPY_BANDWIDTH[card]


def resident_ctas(registers: int, num_warps: int, shared_bytes: int) -> int:
    """CTAs of one kernel that fit on an SM at once (the occupancy calculator's rule)."""
    regs_per_warp = math.ceil(registers * 32 / REGISTER_UNIT_PER_WARP) * REGISTER_UNIT_PER_WARP
    by_registers = (REGISTERS_PER_SM // max(regs_per_warp, 1)) // num_warps
    by_warps = MAX_WARPS_PER_SM // num_warps
    by_shared = SHARED_PER_SM // (shared_bytes + SHARED_RESERVED_PER_CTA)
    return min(MAX_CTAS_PER_SM, by_registers, by_warps, by_shared)


@dataclass
class KernelProfile:
    name: str
    grid: list[int]  # of the first launch
    launches: int  # alike launches counted together (one per wave of wide rows)
    num_warps: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    shared_bytes: int
    resident_ctas: int
    resident_warps: int
    instructions_per_element: float
    barriers_per_row: float
    mufu_per_element: float
    load_bits: list[int]  # widths of the global loads in the code
    store_bits: list[int]
    load_128_fraction: float  # of the executed global-load bytes
    store_128_fraction: float
    loops: list[str] = field(default_factory=list)  # "file:line x trips"
    # the values of ``kernels.trips.profile_hints`` that its tags used (simulated rates)
    hints: dict[str, float] = field(default_factory=dict)


def _namespace(launch: Launch, rows_model: str = "normal") -> tuple[dict, dict]:
    """The names a tag may use for ``launch``, and which of them the kernel module's
    ``profile_hints`` gave (for rows of ``rows_model``)."""
    values = {name: value for name, value in launch.args.items()
              if not isinstance(value, torch.Tensor)}
    for value in launch.args.values():  # the fields of the grouped arguments (settings.k)
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            values.update({name: field for name, field in zip(value._fields, value, strict=True)
                           if not isinstance(field, torch.Tensor) and name not in values})
    values.update(cdiv=lambda a, b: -(-a // b),
                  num_programs=lambda axis: launch.grid[axis] if axis < len(launch.grid) else 1)
    hints = trips.profile_hints(launch.kernel.fn.__name__, dict(values), rows_model=rows_model)
    values.update(hints)
    return values, hints


def profile_launch(launch: Launch, rows: int, classes: int, launches: int = 1,
                   programs: int | None = None, rows_model: str = "normal") -> KernelProfile:
    """Resources and executed-instruction counts of one launch, per element of a call on
    ``rows`` x ``classes`` logits; or of ``launches`` alike (the waves of wide rows) that
    run ``programs`` programs in all; data-dependent counts simulated on rows of
    ``rows_model``."""
    cubin = launch.compiled.asm["cubin"]
    instructions, labels = disassemble(cubin, KernelSource([launch.kernel]))
    namespace, hints = _namespace(launch, rows_model)
    used: set[str] = set()

    def evaluate(kind: str, expr: str, source) -> float:
        try:
            code = compile(expr, "<tag>", "eval")
            used.update(code.co_names)
            return float(eval(code, {"__builtins__": {"min": min, "max": max}}, namespace))
        except Exception as error:  # name the tag that failed
            raise ValueError(f"cannot evaluate '# {kind}: {expr}' at {where(source)} for "
                             f"{launch.name}: {error}") from error

    counts, regions = execution_counts(instructions, labels, evaluate)
    usage = resource_usage(cubin)
    threads = launch.num_warps * 32
    programs = programs or math.prod(launch.grid)
    elements = rows * classes
    scale = threads * programs / elements

    def executed(predicate) -> float:
        return sum(count for instruction, count in zip(instructions, counts, strict=True)
                   if predicate(instruction))

    def global_bytes(op: str, wide_only: bool) -> float:
        return sum(count * instruction.width_bits / 8
                   for instruction, count in zip(instructions, counts, strict=True)
                   if instruction.opcode.startswith(op + ".")
                   and (not wide_only or instruction.width_bits == 128))

    def fraction(op: str) -> float:
        total = global_bytes(op, False)
        return global_bytes(op, True) / total if total else 1.0

    def static_bytes(op: str) -> int:
        return sum(instruction.width_bits // 8 for instruction in instructions
                   if instruction.opcode.startswith(op))

    shared = max(launch.compiled.metadata.shared, usage.get("SHARED", 0))
    ctas = resident_ctas(usage.get("REG", 0), launch.num_warps, shared)
    return KernelProfile(
        name=launch.name, grid=list(launch.grid), launches=launches,
        num_warps=launch.num_warps,
        registers=usage.get("REG", 0), spill_store_bytes=static_bytes("STL"),
        spill_load_bytes=static_bytes("LDL"), stack_bytes=usage.get("STACK", 0),
        shared_bytes=shared, resident_ctas=ctas, resident_warps=ctas * launch.num_warps,
        instructions_per_element=executed(lambda _: True) * scale,
        barriers_per_row=executed(lambda i: i.opcode.startswith("BAR")) * programs / rows,
        mufu_per_element=executed(lambda i: i.opcode.startswith("MUFU")) * scale,
        load_bits=sorted({i.width_bits for i in instructions if i.opcode.startswith("LDG")}),
        store_bits=sorted({i.width_bits for i in instructions if i.opcode.startswith("STG")}),
        load_128_fraction=fraction("LDG"), store_128_fraction=fraction("STG"),
        loops=[f"{region.kind} {where(region.source, region.context)} x {region.factor:g}"
               for region in regions],
        hints={name: hints[name] for name in sorted(used) if name in hints},
    )


@dataclass
class CallProfile:
    rows: int
    classes: int
    dtype: str
    k: int
    target: bool
    teacher_grad: bool
    bytes_per_element: int
    kernels: list[KernelProfile]
    hbm_bytes_per_element: float = 0.0  # the design's model (policy.hbm_bytes_per_element)
    ranks: int = 1  # vocabulary parallel: one rank's slice of the classes, C / ranks
    listed: int = 0  # against a sparse teacher of this many classes a row (``sparse``)
    rows_model: str = "normal"  # the rows its data-dependent counts were simulated on
    instructions_per_element: float = 0.0
    ceiling_h100: float = 0.0  # % of copy bandwidth the issue rate allows
    ceiling_h200: float = 0.0

    def __post_init__(self):
        self.instructions_per_element = sum(k.instructions_per_element for k in self.kernels)
        for card in COPY_BANDWIDTH:
            budget = instruction_budget(self.bytes_per_element, card)
            ceiling = min(100.0, 100.0 * budget / max(self.instructions_per_element, 1e-9))
            setattr(self, f"ceiling_{card.lower()}", ceiling)


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def profile_call(rows: int, classes: int, dtype: str = "bfloat16", k: int = 7,
                 target: bool = True, teacher_grad: bool = False, ranks: int = 1,
                 rows_model: str = "normal", listed: int = 0) -> CallProfile:
    """Compile and count every kernel of one training-step call on ``rows`` x ``classes``
    logits of ``dtype`` (the student's gradient, and the teacher's with ``teacher_grad``);
    with ``ranks`` > 1, of the first rank of a vocabulary-parallel call (C / ranks classes,
    rounded up), counted per element of its slice; with ``listed`` > 0, against a sparse
    teacher of that many classes a row (no teacher logits, no teacher gradient);
    data-dependent counts (the exact-selection fallback) simulated on rows of ``rows_model``
    (``ROW_MODELS``)."""
    torch_dtype = DTYPES[dtype]
    width = -(-classes // ranks)
    teacher_grad = teacher_grad and not listed
    student = torch.empty(rows, width, dtype=torch_dtype)
    teacher = student if listed else torch.empty(rows, width, dtype=torch_dtype)
    labels = torch.zeros(rows, dtype=torch.long) if target else None
    launches = compile_call(student, teacher, labels, LossConfig(k=k), True, teacher_grad,
                            sharded=ranks > 1, listed=listed)
    # read the logits, write the gradient(s): a sparse teacher's few bytes a row do not count
    teacher_bytes = 0 if listed else torch_dtype.itemsize
    moved = 2 * torch_dtype.itemsize + teacher_bytes * (1 + teacher_grad)
    # the waves of wide rows launch the same kernels with the same arguments but the first
    # row (and a smaller last wave): counted once each, over all their programs
    alike: dict[tuple, list[Launch]] = {}
    for launch in launches:
        key = (launch.name, id(launch.compiled),
               tuple((name, value) for name, value in launch.args.items()
                     if name != "row0" and not isinstance(value, torch.Tensor)))
        alike.setdefault(key, []).append(launch)
    return CallProfile(rows, classes, dtype, k, target, teacher_grad, moved,
                       [profile_launch(group[0], rows, width, len(group),
                                       sum(math.prod(launch.grid) for launch in group),
                                       rows_model)
                        for group in alike.values()],
                       hbm_bytes_per_element=policy.hbm_bytes_per_element(
                           rows, classes, torch_dtype.itemsize, teacher_bytes, teacher_grad,
                           HOPPER, ranks),
                       ranks=ranks, rows_model=rows_model, listed=listed)
