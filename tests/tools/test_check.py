"""The comparison harness judges every backend test: it must pass an exact backend and reject
one that is off by about 1e-4."""

import dataclasses

import pytest
import torch

from ldrld_kernels import backends
from ldrld_kernels.tools.check import compare_with_reference
from tests.helpers import random_logits, random_target


def _off_by(factor_loss: float, factor_grad: float):
    """The PyTorch path with its row losses and its student gradient scaled."""
    exact = backends.BACKENDS["torch"].rows

    def rows(*args, **kwargs):
        row_loss, parts, grad_s, grad_t = exact(*args, **kwargs)
        return (row_loss * factor_loss, parts, None if grad_s is None else grad_s * factor_grad,
                grad_t)

    return dataclasses.replace(backends.BACKENDS["torch"], rows=rows)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("factor_loss", "factor_grad", "passes"), [
    (1.0, 1.0, True), (1 + 1e-4, 1.0, False), (1.0, 1 + 1e-4, False)])
def test_harness_rejects_an_error_of_1e_4(monkeypatch, dtype, factor_loss, factor_grad, passes):
    student, teacher = random_logits(6, 300, dtype=dtype, seed=21)
    target = random_target(6, num_classes=300, seed=21)
    monkeypatch.setitem(backends.BACKENDS, "torch", _off_by(factor_loss, factor_grad))
    result = compare_with_reference(student, teacher, target, backend="torch",
                                    generator=torch.Generator().manual_seed(0))
    assert result.passed is passes, result
