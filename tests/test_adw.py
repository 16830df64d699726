import math

import pytest
import torch

from ldrld_kernels import adw_weights


def test_default_table_for_k7():
    w = adw_weights(7, dtype=torch.float64)
    assert w.shape == (7, 7)
    assert round(w[0, 1].item(), 4) == 0.6886
    assert round(w[0, 6].item(), 4) == 0.1788
    assert round(w.sum().item(), 4) == 7.7237
    assert torch.count_nonzero(w) == 21


def test_upper_triangle_only():
    w = adw_weights(5)
    assert torch.equal(w, torch.triu(w, diagonal=1))
    assert (torch.triu(w, diagonal=1)[torch.triu(torch.ones(5, 5), 1).bool()] > 0).all()


def test_formula_and_arguments():
    w = adw_weights(4, adw_scale=3.0, adw_decay=0.2, adw_offset=0.5, dtype=torch.float64)
    # ranks 2 and 4 are w[1, 3]
    assert w[1, 3].item() == pytest.approx(3.0 * math.exp(-0.2 * 6) / (0.5 + 2), rel=1e-15)
    assert w.dtype == torch.float64


@pytest.mark.parametrize("k", [1, 0, 2.0, True])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        adw_weights(k)
