"""Selecting each row's top-k classes in rank order, ties to the smaller class: what every
path (the PyTorch rows, the vocabulary-parallel merge, the reference's sort) agrees on."""

from __future__ import annotations

import torch


def top_k_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest entries of each row of ``x`` (rows, C), in decreasing order.

    Ties go to the smaller class index, exactly as ``torch.sort(x, descending=True,
    stable=True)`` orders them, but without sorting the whole row: ``torch.topk`` finds the
    k-th largest value; a second ``topk`` on distinct integer keys takes every entry above
    it and then the tied entries from the left, each group by ascending index; a stable sort
    of those k by value finishes the order.
    """
    num_classes = x.shape[-1]
    kth = torch.topk(x, k, dim=-1).values[:, -1:]
    from_left = torch.arange(num_classes, 0, -1, device=x.device)
    keys = torch.where(x > kth, from_left + num_classes, torch.where(x == kth, from_left, 0))
    index = torch.topk(keys, k, dim=-1).indices
    by_value = torch.sort(x.gather(1, index), dim=-1, descending=True, stable=True).indices
    return index.gather(1, by_value)
