"""The in-place gradient scaling that backward runs on the Triton path."""

import pytest
import torch

from tests.helpers import DEVICE, requires_triton

pytestmark = requires_triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("numel", [1, 4095, 4096 * 3 + 7])
@pytest.mark.parametrize("scale", [2.5, -0.125, 0.0, 1.0])
def test_scale_in_place(dtype, numel, scale):
    from ldrld_kernels.kernels.scale import scale_in_place

    grad = torch.randn(numel, generator=torch.Generator().manual_seed(numel)).to(DEVICE, dtype)
    expected = (grad.float() * scale).to(dtype)
    result = scale_in_place(grad, torch.tensor(scale, device=DEVICE))
    assert result.data_ptr() == grad.data_ptr()
    # one bfloat16 ulp: the interpreter rounds float32 to bfloat16 towards zero
    rtol = 2**-7 if dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(grad.float(), expected.float(), rtol=rtol, atol=0.0)


def test_scale_of_nothing():
    from ldrld_kernels.kernels.scale import scale_in_place

    empty = torch.empty(0, 5, device=DEVICE)
    assert scale_in_place(empty, torch.tensor(3.0, device=DEVICE)) is empty
