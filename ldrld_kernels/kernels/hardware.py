"""What the launchers need to know about the GPU they launch on, in one place.

On a CUDA device the numbers come from the device itself. ``ldrld profile`` compiles the
kernels for an H100/H200 on a machine without one and states the chip it assumes with
``assume``; everywhere else (CPU tensors under the Triton interpreter) a launch sees
``INTERPRETER``, a one-multiprocessor machine, so that the interpreter runs few programs.

A launch runs on the current CUDA device and its current stream, not on its tensors'
device: every launcher enters ``on_device`` of its tensors first (with logits on cuda:1 while
cuda:0 is current, as ``device_map="auto"`` places a model's output layer, a launch would
otherwise go to cuda:0).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Hardware:
    name: str
    multiprocessors: int
    l2_bytes: int


# The H100 SXM and the H200 are the same Hopper die (132 SMs); the 50 MB L2 of the H100 is the
# smaller of the two, so a design sized for it fits both.
HOPPER = Hardware("H100/H200 (sm_90)", multiprocessors=132, l2_bytes=50 * 2**20)
INTERPRETER = Hardware("Triton interpreter", multiprocessors=1, l2_bytes=4 * 2**20)

_assumed: contextvars.ContextVar[Hardware | None] = contextvars.ContextVar(
    "ldrld_assumed_hardware", default=None)


@contextlib.contextmanager
def assume(hardware: Hardware) -> Iterator[None]:
    """Launches inside see ``hardware`` whatever their tensors' device (``ldrld profile``)."""
    token = _assumed.set(hardware)
    try:
        yield
    finally:
        _assumed.reset(token)


@functools.cache
def _cuda_hardware(index: int) -> Hardware:
    props = torch.cuda.get_device_properties(index)
    return Hardware(props.name, props.multi_processor_count,
                    getattr(props, "L2_cache_size", HOPPER.l2_bytes))


def hardware_of(device: torch.device) -> Hardware:
    """The GPU a launch on ``device`` runs on."""
    assumed = _assumed.get()
    if assumed is not None:
        return assumed
    if device.type == "cuda":
        return _cuda_hardware(device.index if device.index is not None
                              else torch.cuda.current_device())
    return INTERPRETER


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Launches and allocations inside run on ``device`` (its current stream): that device
    made current for a CUDA device, nothing for the others (CPU tensors under the
    interpreter)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()
