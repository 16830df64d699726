"""Adaptive Decay Weights (ADW) of the dense pairs.

Pair (i, j) of 1-based ranks, i < j, gets

    w_ij = adw_scale * exp(-adw_decay * (i + j)) / (adw_offset + |i - j|)

the product of the inverse rank weighting (IRW, the first factor pair) and the exponential
rank decay (ERD). The weights are not normalised.
"""

from __future__ import annotations

import math

import torch

from ldrld_kernels.validation import check_int


def adw_weight(i: int, j: int, adw_scale: float, adw_decay: float, adw_offset: float) -> float:
    """The ADW weight of the pair of 1-based ranks ``i`` and ``j``."""
    return adw_scale * math.exp(-adw_decay * (i + j)) / (adw_offset + abs(i - j))


def adw_weights(
    k: int,
    adw_scale: float = 2.0,
    adw_decay: float = 0.05,
    adw_offset: float = 1.5,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``(k, k)`` table of pair weights: ``[i - 1, j - 1]`` holds ``w_ij`` for ``i < j``.

    The diagonal and the lower triangle are 0, so ``adw_weights(k).sum()`` is the total
    weight of the ``k (k - 1) / 2`` pairs (7.7237 for the defaults at ``k = 7``).
    """
    check_int("k", k, function="adw_weights")  # (the rule of ldrld_loss's k)
    if k < 2:
        raise ValueError(f"adw_weights: k must be >= 2, got k={k!r}")
    table = [
        [adw_weight(i + 1, j + 1, adw_scale, adw_decay, adw_offset) if j > i else 0.0
         for j in range(k)]
        for i in range(k)
    ]
    return torch.tensor(table, dtype=dtype, device=device)
