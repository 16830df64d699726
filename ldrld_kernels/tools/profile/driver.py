"""Compiling through the project's real launchers without a GPU: a stand-in driver reports an
sm_90 device, and every Triton launch compiles through Triton's own specialization and is
recorded instead of run."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels.hardware import HOPPER, assume
from ldrld_kernels.pytorch import parallel

SM_TARGET = 90


@dataclass
class Launch:
    """One kernel launch of a call, compiled for sm_90 and not run."""

    kernel: Any  # the JITFunction (triton has no type information)
    grid: tuple[int, ...]
    args: dict  # argument name -> value, constexprs included (tensors as given)
    compiled: Any  # triton.compiler.CompiledKernel

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def num_warps(self) -> int:
        return self.compiled.metadata.num_warps


class _CompileOnlyDriver:
    """Stands in for the CUDA driver: an sm_90 device 0 on stream 0, and nothing else."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", SM_TARGET, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


@contextlib.contextmanager
def compile_only() -> Iterator[list[Launch]]:
    """Inside, every Triton launch compiles for sm_90 through ``JITFunction.run`` (its own
    specialization and cache) and is appended to the yielded list instead of running;
    the launchers see an H100/H200 (``hardware.HOPPER``)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("ldrld profile compiles the kernels: run it without "
                           "TRITON_INTERPRET=1 (the interpreter replaces the compiler)")
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []
    original_run = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        compiled = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        # positional arguments first (the launchers pass keywords: maybe none)
        bound = dict(zip(self.arg_names, args, strict=False))
        bound.update({name: value for name, value in kwargs.items() if name in self.arg_names})
        launches.append(Launch(self, tuple(grid), bound, compiled))
        return compiled

    previous = getattr(driver, "_active", None)
    driver.set_active(_CompileOnlyDriver())
    JITFunction.run = record
    try:
        with assume(HOPPER), warnings.catch_warnings():
            # Triton 3.9 announces a future default of its own; it is not ours to set
            warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
            yield launches
    finally:
        JITFunction.run = original_run
        driver.set_active(previous)


class _OneRank(parallel.Shard):
    """A rank whose collectives return their input: the vocabulary-parallel launches of one
    rank's slice, without a process group."""

    def all_reduce(self, tensor: torch.Tensor, op: object) -> torch.Tensor:
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]


def compile_call(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None,
                 config: LossConfig, student_grad: bool = True,
                 teacher_grad: bool = False, sharded: bool = False,
                 listed: int = 0) -> list[Launch]:
    """Compile, for sm_90, every kernel that ``ldrld_loss(..., backend="triton")`` launches on
    these (CPU) tensors: the forward pass with a mean's gradient scale, then the backward of
    ``loss.backward()``; ``sharded``: as one rank's slice of the classes
    (``kernels.sharded``); ``listed`` > 0: against a sparse teacher of that many classes a
    row (``teacher`` unused)."""
    from ldrld_kernels.kernels import launcher, scale
    from ldrld_kernels.kernels import sharded as sharded_launcher

    with compile_only() as launches:
        if listed:
            rows = student.shape[0]
            ids = torch.arange(listed).expand(rows, listed)
            logprobs = torch.full((rows, listed), -math.log(listed + 1.0))
            teacher_grad, grad_t = False, None
            _, _, grad_s = launcher.ldrld_sparse_rows(student, ids, logprobs, target, config,
                                                      student_grad, torch.ones(()))
        elif sharded:
            width = student.shape[1]
            _, _, grad_s, grad_t = sharded_launcher.ldrld_rows(
                student, teacher, target, config, student_grad, teacher_grad, torch.ones(()),
                _OneRank(None, 0, width, width))
        else:
            _, _, grad_s, grad_t = launcher.ldrld_rows(
                student, teacher, target, config, student_grad, teacher_grad, torch.ones(()))
        for grad in (grad_s, grad_t):
            if grad is not None:
                scale.scale_in_place(grad, torch.ones(()))
    return launches
