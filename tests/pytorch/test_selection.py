"""Each row's top-k in rank order, ties to the smaller class (``pytorch.selection``)."""

import torch

from ldrld_kernels.pytorch.selection import top_k_indices


def test_top_k_indices_with_massive_ties():
    x = torch.zeros(2, 50)
    x[1, 40] = 1.0
    assert top_k_indices(x, 3).tolist() == [[0, 1, 2], [40, 0, 1]]


def test_top_k_indices_is_the_stable_sort():
    generator = torch.Generator().manual_seed(3)
    # values on a coarse grid: ties everywhere, across the k-th too
    x = (torch.randint(-3, 4, (64, 300), generator=generator) * 0.5).to(torch.float32)
    for k in (2, 7, 64, 299):
        expected = torch.sort(x, dim=-1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(top_k_indices(x, k), expected)
