"""Compile every Triton kernel for an H100 (sm_90) through the real launchers, without a GPU.

The interpreter runs the kernels' Python; this runs Triton's compiler on them (front end,
MLIR passes, LLVM, ptxas), which catches what the interpreter accepts and the compiler does
not. Run as a script without TRITON_INTERPRET: ``python3 tests/gpu_compile.py``. Prints one
line per compiled variant and exits non-zero on a failure.
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run without TRITON_INTERPRET=1: the interpreter replaces the compiler")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ldrld_kernels import triton_chunked, triton_common, triton_fused
from ldrld_kernels.config import LossConfig

TARGET = GPUTarget("cuda", 90, 32)
POINTER = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16",
           torch.int64: "*i64", torch.int32: "*i32"}


def _type_of(value):
    if isinstance(value, torch.Tensor):
        return POINTER[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i64" if abs(value) >= 2**31 else "i32"
    return "fp32"


class Compiling:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kwargs)`` compiles it."""

    def __init__(self, kernel, compiled):
        self.kernel, self.compiled = kernel, compiled

    def __getitem__(self, grid):
        def compile_only(*args, num_warps=4, **constexprs):
            names = self.kernel.arg_names
            signature = {name: _type_of(value) for name, value in zip(names, args)}
            signature.update({name: "constexpr" for name in constexprs})
            source = ASTSource(self.kernel, signature, constexprs=constexprs)
            binary = triton.compile(source, target=TARGET, options={"num_warps": num_warps})
            self.compiled.append((self.kernel.__name__, constexprs, binary))

        return compile_only


def main() -> int:
    print(f"compiling with Triton {triton.__version__} for {TARGET}")
    compiled = []
    for module, name in ((triton_fused, "_ldrld_fused_kernel"),
                         (triton_chunked, "_chunk_stats_kernel"),
                         (triton_chunked, "_merge_kernel"),
                         (triton_chunked, "_chunk_grad_kernel"),
                         (triton_common, "_scale_kernel")):
        setattr(module, name, Compiling(getattr(module, name), compiled))
    triton_chunked._programs_to_fill = lambda device: 528

    cases = [  # (rows, C, k, dtypes, target, rank_by, grads, scaled for a mean)
        (4, 1000, 7, (torch.bfloat16, torch.bfloat16), True, "student", (True, False), True),
        (4, 37, 2, (torch.float32, torch.bfloat16), False, "teacher", (True, True), False),
        (2, 16384, 64, (torch.float16, torch.float16), True, "student", (False, False), False),
        (2, 131072, 7, (torch.bfloat16, torch.bfloat16), True, "student", (True, False), True),
        (2, 20000, 16, (torch.float32, torch.float32), False, "teacher", (True, True), False),
    ]
    failures = 0
    for rows, classes, k, (s_dtype, t_dtype), has_target, rank_by, grads, scaled in cases:
        student = torch.empty(rows, classes, dtype=s_dtype)
        teacher = torch.empty(rows, classes, dtype=t_dtype)
        target = torch.zeros(rows, dtype=torch.long) if has_target else None
        before = len(compiled)
        try:
            triton_fused.ldrld_rows(student, teacher, target, LossConfig(k=k, rank_by=rank_by),
                                    *grads, torch.ones(()) if scaled else None)
            if scaled:
                triton_common.scale_in_place(student, torch.ones(()))
        except Exception as error:  # noqa: BLE001 (report every case, then fail)
            failures += 1
            print(f"FAIL {rows} x {classes}, k={k}: {type(error).__name__}: {error}")
            continue
        for name, constexprs, binary in compiled[before:]:
            print(f"ok   {rows} x {classes}, k={k}, {s_dtype}/{t_dtype}: {name} "
                  f"{ {key: value for key, value in constexprs.items()} } "
                  f"shared={binary.metadata.shared}")
    print(f"gpu_compile: {len(cases) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
