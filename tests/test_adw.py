import math

import pytest
import torch

from ldrld_kernels import adw_weights, ldrld_loss


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


@pytest.mark.parametrize("k", [1, 0, -3])
def test_bad_k(k):
    with pytest.raises(ValueError, match=f"adw_weights: k must be >= 2, got k={k}"):
        adw_weights(k)


@pytest.mark.parametrize("k", [3.0, True, "3"])
def test_k_not_an_int_is_a_type_error_as_in_ldrld_loss(k):
    # one rule: ldrld_loss(k=3.0) raises TypeError, and so does adw_weights(3.0)
    with pytest.raises(TypeError, match=f"adw_weights: k must be an int, got k={k!r}"):
        adw_weights(k)
    student = torch.randn(2, 10)
    with pytest.raises(TypeError, match=f"ldrld_loss: k must be an int, got k={k!r}"):
        ldrld_loss(student, student, k=k)


def test_k_any_integral():
    assert torch.equal(adw_weights(torch.tensor(5).numpy()[()]), adw_weights(5))
