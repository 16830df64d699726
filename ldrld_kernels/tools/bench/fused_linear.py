"""``ldrld bench --fused-linear``: a training step of the student's hidden states and output
layer, the logits materialized against ``ldrld_fused_linear_loss``: time and peak memory."""

from __future__ import annotations

import functools

import torch

from ldrld_kernels.api import ldrld_loss
from ldrld_kernels.tools.bench.measure import step_peak_memory_bytes, time_ms

# (rows, hidden size, classes): a CPU-sized LM batch, and Llama-3's head on a GPU
FUSED_LINEAR_SHAPES = {"cpu": (4096, 512, 32000), "cuda": (8192, 4096, 128256)}


def fused_linear_inputs(rows: int, hidden: int, classes: int, dtype: torch.dtype,
                        device: torch.device, seed: int = 0):
    """Hidden states and output layers of a student and a teacher of the same hidden size,
    logits of standard deviation about 3, and targets."""
    generator = torch.Generator().manual_seed(seed)
    h_s, h_t = (torch.randn(rows, hidden, generator=generator) for _ in range(2))
    w_s, w_t = (torch.randn(classes, hidden, generator=generator) * (3 / hidden**0.5)
                for _ in range(2))
    target = torch.randint(0, classes, (rows,), generator=generator)
    return (*(x.to(device, dtype) for x in (h_s, w_s, h_t, w_t)), target.to(device))


def fused_linear_step(variant: str, h_s, w_s, h_t, w_t, target, k: int = 7):
    """A training step of the student's output layer: the loss of the hidden states and
    the layers, and its gradients for the student's hidden states and weight; the logits
    materialized and passed to ``ldrld_loss``, or ``ldrld_fused_linear_loss``."""
    from ldrld_kernels.fused_linear import ldrld_fused_linear_loss

    h_s, w_s = (x.detach().requires_grad_(True) for x in (h_s, w_s))
    if variant == "fused-linear":
        loss = ldrld_fused_linear_loss(h_s, w_s, h_t, w_t, target, k=k)
    else:
        loss = ldrld_loss(h_s @ w_s.T, h_t @ w_t.T, target, k=k)
    return torch.autograd.grad(loss, (h_s, w_s))


def run_fused_linear(rows: int, hidden: int, classes: int, dtype: torch.dtype,
                     device: torch.device, budget_s: float) -> list[dict]:
    """Time and peak memory of a step with the logits materialized and with the fused-linear
    loss, on the same inputs."""
    inputs = fused_linear_inputs(rows, hidden, classes, dtype, device)
    results = []
    for variant in ("materialized", "fused-linear"):
        step = functools.partial(fused_linear_step, variant, *inputs)
        peak = step_peak_memory_bytes(step, device)
        results.append({"variant": variant, "rows": rows, "hidden": hidden, "classes": classes,
                        "dtype": str(dtype).removeprefix("torch."),
                        "ms": time_ms(step, device, budget_s),
                        "peak_mib": None if peak is None else peak / 2**20})
    return results


def format_fused_linear(results: list[dict]) -> str:
    lines = ["variant        rows  hidden  classes  dtype       ms  peak MiB"]
    for r in results:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"{r['variant']:<13} {r['rows']:>5} {r['hidden']:>7} {r['classes']:>8}  "
                     f"{r['dtype']:<8} {r['ms']:>7.0f} {peak:>9}")
    peaks = [r["peak_mib"] for r in results]
    if None not in peaks and peaks[1] > 0:
        lines.append(f"peak memory, materialized / fused-linear: {peaks[0] / peaks[1]:.1f}x")
    return "\n".join(lines)
