"""Reading the SASS of a compiled kernel: its instructions with their source lines and
``# trips:`` / ``# runs:`` tags, its loops (from their backward branches) and conditional
blocks, and how often each instruction runs per thread."""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

_INSTRUCTION = re.compile(
    r"^\s*/\*(?P<address>[0-9a-f]+)\*/\s+(?P<predicate>@!?U?P[0-9T]+\s+)?"
    r"(?P<opcode>[A-Z][A-Z0-9_.]*)(?P<operands>[^;]*);")
SOURCE = re.compile(r'//## File "(?P<file>[^"]+)", line (?P<line>\d+)')
_INLINED_AT = re.compile(r' inlined at "(?P<file>[^"]+)", line (?P<line>\d+)')
_LABEL = re.compile(r"^(?P<label>\.L_x_\d+):")
_TARGET = re.compile(r"`\((?P<label>\.L_x_\d+)\)")
TAG = re.compile(r"#\s*(?P<kind>trips|runs):\s*(?P<expr>.+?)\s*$")


@dataclass
class Instruction:
    address: int
    predicated: bool
    opcode: str
    operands: str
    source: tuple[str, int] | None  # the innermost line (in a helper inlined, its own)
    target: str | None = None  # branch label
    tag: tuple[str, str] | None = None  # ("trips" | "runs", expression) of its source line
    # the lines its source was inlined at, innermost first: one helper's loop inlined at two
    # call sites is two loops
    context: tuple[tuple[str, int], ...] = ()

    @property
    def width_bits(self) -> int:
        """Access width of a load or store from its opcode modifiers."""
        parts = self.opcode.split(".")
        for bits in ("128", "64"):
            if bits in parts:
                return int(bits)
        if "U16" in parts or "S16" in parts:
            return 16
        if "U8" in parts or "S8" in parts:
            return 8
        return 32


def _tool(name: str) -> str:
    from triton import knobs

    return getattr(knobs.nvidia, name).path


def read_cubin(tool: str, options: list[str], cubin: bytes) -> str:
    """What Triton's ``tool`` (nvdisasm, cuobjdump) prints for ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        return subprocess.run([_tool(tool), *options, handle.name], capture_output=True,
                              text=True, check=True).stdout


@dataclass(frozen=True)
class _Function:
    """The source of one JIT function as imported now: its file and its lines from ``first``
    (what Triton compiles and keys its cache by, with ``first``)."""

    path: str
    first: int
    lines: tuple[str, ...]


class KernelSource:
    """The source lines of a kernel and of the JIT functions it can reach (the helpers inlined
    into it), as imported now. ``locate`` maps a line of a binary's line information, whose
    path may be that of another copy of the same source, to the function's current file and
    line text: by the file's name and the line range of a function of that name's file (the
    line numbers are part of Triton's cache key, the path is not)."""

    def __init__(self, kernels: Sequence[Any] = ()):  # JITFunctions
        from triton.runtime.jit import JITFunction

        functions, seen, todo = [], set(), list(kernels)
        while todo:
            jit = todo.pop()
            if id(jit) in seen:
                continue
            seen.add(id(jit))
            functions.append(_Function(jit.fn.__code__.co_filename, jit.starting_line_number,
                                       tuple(jit.raw_src)))
            for value in jit.fn.__globals__.values():
                for candidate in (vars(value).values() if isinstance(value, ModuleType)
                                  else (value,)):
                    if isinstance(candidate, JITFunction):
                        todo.append(candidate)
        self.functions = functions

    def locate(self, path: str, line: int) -> tuple[str, str] | None:
        """(current path, text) of ``path:line``, or None outside the kernel's functions."""
        name = Path(path).name
        found = {function.path: function.lines[line - function.first]
                 for function in self.functions
                 if Path(function.path).name == name
                 and function.first <= line < function.first + len(function.lines)}
        if len(found) > 1:  # files of one name: the one whose directories match the most
            best = max(_common_tail(candidate, path) for candidate in found)
            found = {key: text for key, text in found.items()
                     if _common_tail(key, path) == best}
            if len(found) > 1:
                raise ValueError(f"line info {path}:{line} matches several sources: "
                                 f"{', '.join(sorted(found))}")
        return next(iter(found.items()), None)


def _common_tail(a: str, b: str) -> int:
    """How many trailing components the paths ``a`` and ``b`` share."""
    count = 0
    for ours, theirs in zip(reversed(Path(a).parts), reversed(Path(b).parts), strict=False):
        if ours != theirs:
            break
        count += 1
    return count


def disassemble(cubin: bytes, source: KernelSource | None = None
                ) -> tuple[list[Instruction], dict[str, int]]:
    """The kernel's instructions with their source lines (and the lines those were inlined
    at), and its branch labels; each line with its ``# trips:`` / ``# runs:`` tag when it is a
    line of ``source``. nvdisasm's ``-gi`` prints a location as the innermost line, "inlined
    at" its call site, then each call site's own line the same way, outward."""
    text = read_cubin("nvdisasm", ["-c", "-gi"], cubin)
    source_of = source or KernelSource()
    instructions: list[Instruction] = []
    labels: dict[str, int] = {}
    where: tuple[str, int] | None = None
    tag: tuple[str, str] | None = None
    context: tuple[tuple[str, int], ...] = ()
    chain = False
    for line in text.splitlines():
        if match := SOURCE.search(line):
            if not chain:  # the innermost line of a new location
                where, tag = (match["file"], int(match["line"])), None
                if located := source_of.locate(*where):
                    where = (located[0], where[1])
                    if found := TAG.search(located[1]):
                        tag = (found["kind"], found["expr"])
                context = tuple((at["file"], int(at["line"]))
                                for at in _INLINED_AT.finditer(line))
            elif at := _INLINED_AT.search(line):  # the next call site out
                context += ((at["file"], int(at["line"])),)
            chain = True
            continue
        chain = False
        if match := _LABEL.match(line.strip()):
            labels[match["label"]] = len(instructions)
        elif match := _INSTRUCTION.match(line):
            target = _TARGET.search(match["operands"])
            instructions.append(Instruction(
                int(match["address"], 16), match["predicate"] is not None, match["opcode"],
                match["operands"].strip(), where, target["label"] if target else None, tag,
                context))
    return instructions, labels


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the kernel as ``cuobjdump --dump-resource-usage``
    reports them."""
    text = read_cubin("cuobjdump", ["--dump-resource-usage"], cubin)
    function = text[text.index("Function"):] if "Function" in text else text
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)",
                                                         function)}


def _successors(index: int, instructions: list[Instruction], labels: dict[str, int]):
    instruction = instructions[index]
    op = instruction.opcode.split(".")[0]
    if op in ("BRX", "JMX", "JMP"):
        raise NotImplementedError(f"indirect branch {instruction.opcode} at "
                                  f"{instruction.address:#x}")
    following = [index + 1] if index + 1 < len(instructions) else []
    if instruction.opcode.startswith("BRA.DIV"):
        # taken only by a divergent warp (ptxas's out-of-line fallback for warp shuffles);
        # a kernel's warps reach their reductions converged
        return following
    if op == "BRA":
        return [labels[cast(str, instruction.target)]] + (following if instruction.predicated
                                                         else [])
    if op in ("EXIT", "RET", "KILL"):
        return following if instruction.predicated else []
    return following


@dataclass
class Region:
    """A loop or a conditional block: instructions ``first..last`` run ``factor`` times per
    arrival (trips of a loop, probability of a block)."""

    kind: str
    first: int
    last: int
    source: tuple[str, int] | None
    factor: float
    context: tuple[tuple[str, int], ...] = ()  # where ``source`` was inlined (Instruction's)


def execution_counts(instructions: list[Instruction], labels: dict[str, int],
                     evaluate) -> tuple[list[float], list[Region]]:
    """How often each instruction runs per thread. ``evaluate(kind, expr, source)`` turns a
    ``# trips:`` or ``# runs:`` tag into a number."""
    reachable, stack = set(), [0]
    while stack:
        index = stack.pop()
        if index in reachable:
            continue
        reachable.add(index)
        stack.extend(_successors(index, instructions, labels))

    # Loops: each backward branch closes one; the latest branch to a header ends its loop.
    spans: dict[int, int] = {}
    for index in sorted(reachable):
        instruction = instructions[index]
        if instruction.opcode.split(".")[0] == "BRA":
            target = labels[cast(str, instruction.target)]  # (a branch names its label)
            if target < index:
                spans[target] = max(spans.get(target, index), index)
    regions: dict[int, Region] = {}
    for first, last in spans.items():
        source, context, expr = _loop_source(first, last, spans, instructions)
        regions[first] = Region("loop", first, last, source, evaluate("trips", expr, source),
                                context)
    _split_unrolled(list(regions.values()), instructions)
    for index in sorted(reachable):
        instruction = instructions[index]
        op = instruction.opcode.split(".")[0]
        if not instruction.predicated or op not in ("BRA", "EXIT"):
            continue
        tag = instruction.tag
        if tag is None or tag[0] != "runs":
            continue
        last = labels[cast(str, instruction.target)] - 1 if op == "BRA" \
            else len(instructions) - 1
        if last > index:
            regions.setdefault(index + 1, Region(
                "block", index + 1, last, instruction.source,
                evaluate("runs", tag[1], instruction.source), instruction.context))

    counts = [0.0] * len(instructions)
    for index in reachable:
        count = 1.0
        for region in regions.values():
            if region.first <= index <= region.last:
                count *= region.factor
        counts[index] = count
    return counts, sorted(regions.values(), key=lambda region: region.first)


# Opcode families of loop control (counter, compare, branch): not part of the unrolled work.
_LOOP_CONTROL = {"BRA", "ISETP", "UISETP", "VIADD", "IADD3", "UIADD3", "IMAD", "PLOP3", "MOV",
                 "NOP"}


def _loop_source(first: int, last: int, spans: dict[int, int], instructions: list[Instruction]
                 ) -> tuple[tuple[str, int] | None, tuple[tuple[str, int], ...], str]:
    """The tagged ``for`` line of the loop ``first..last``, where it was inlined, and its trip
    count expression: the line of its backward branch when that carries a ``# trips:`` tag,
    else the one tagged line among the loop's own instructions (outside the loops nested in
    it); the branch's line can be that of a library function inlined at the end of the
    body."""
    branch = instructions[last]
    if branch.tag is not None and branch.tag[0] == "trips":
        return branch.source, branch.context, branch.tag[1]
    nested = [(a, b) for a, b in spans.items() if first <= a and b <= last and (a, b) != (first,
                                                                                          last)]
    own = [instructions[i] for i in range(first, last + 1)
           if not any(a <= i <= b for a, b in nested)]
    tagged = sorted({(instruction.source, instruction.context, instruction.tag[1])
                     for instruction in own
                     if instruction.tag is not None and instruction.tag[0] == "trips"})
    if len(tagged) != 1:
        raise ValueError(
            f"loop at SASS {instructions[first].address:#x}-{instructions[last].address:#x} "
            f"(branch at {where(branch.source)}): {len(tagged)} '# trips:' tagged lines among "
            f"its instructions ({', '.join(where(line) for line, _, _ in tagged) or 'none'}); "
            f"expected one")
    return tagged[0]


def _split_unrolled(loops: list[Region], instructions: list[Instruction]) -> None:
    """The compiler may unroll a loop with a run-time trip count: a main loop doing u
    iterations per pass and a remainder loop doing one. Both close on the ``for`` line and
    follow each other in the code, so the loops of one line (and call site, where the line
    information names it: Triton 3.6's does not) that no other loop separates are one loop's
    copies; u is the median ratio, opcode by opcode, of the two bodies' work outside the loop
    control. The main loop then runs trips / u times, the remainder ``trips mod u`` times
    ((u - 1) / 2 for a fractional mean trip count)."""
    groups: list[list[Region]] = []
    for loop in sorted(loops, key=lambda loop: loop.first):
        if groups and (groups[-1][0].source, groups[-1][0].context) == (loop.source,
                                                                        loop.context):
            groups[-1].append(loop)
        else:
            groups.append([loop])
    for group in groups:
        if len(group) < 2:
            continue
        work = {}
        for loop in group:
            families = Counter(i.opcode.split(".")[0]
                               for i in instructions[loop.first:loop.last + 1])
            work[id(loop)] = {op: n for op, n in families.items() if op not in _LOOP_CONTROL}
        base = min(group, key=lambda loop: sum(work[id(loop)].values()))
        unroll = {}
        for loop in group:
            ratios = [work[id(loop)].get(op, 0) / n for op, n in work[id(base)].items()]
            unroll[id(loop)] = max(1, round(statistics.median(ratios))) if ratios else 1
        trips = group[0].factor
        widest = max(unroll.values())
        remainder = trips % widest if trips == int(trips) else (widest - 1) / 2
        for loop in group:
            u = unroll[id(loop)]
            loop.factor = remainder if u == 1 else trips / u
            loop.kind = "remainder loop" if u == 1 else f"loop unrolled x{u}"


def where(source: tuple[str, int] | None, context: tuple[tuple[str, int], ...] = ()) -> str:
    """``file:line`` of a source line, and the call site it was inlined at, if any."""
    if source is None:
        return "unknown"
    inlined = f" (in {where(context[0])})" if context else ""
    return f"{Path(source[0]).name}:{source[1]}{inlined}"
