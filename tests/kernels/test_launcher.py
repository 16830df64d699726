"""The launcher's choices of memory access (``kernels.launcher``): packed and strided reads,
and whole 16-byte groups only from aligned bases. Under TRITON_INTERPRET=1 on CPU, compiled on
a GPU."""

import pytest
import torch

from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels import launcher, policy
from tests.helpers import DEVICE, launch_matches, random_logits, random_target, requires_triton

pytestmark = requires_triton


def test_packed_and_strided_reads_agree():
    # contiguous bfloat16 is read as 32-bit words; a strided view of the same values is not
    student, teacher = random_logits(3, 1536, dtype=torch.bfloat16, seed=13)
    target = random_target(3, num_classes=1536)
    config = LossConfig(k=7)
    wide_s = torch.zeros(3, 3072, dtype=torch.bfloat16)
    wide_s[:, ::2] = student
    contiguous = launcher.ldrld_rows(student.to(DEVICE), teacher.to(DEVICE),
                                         target.to(DEVICE), config, True, False)
    strided = launcher.ldrld_rows(wide_s.to(DEVICE)[:, ::2], teacher.to(DEVICE),
                                      target.to(DEVICE), config, True, False)
    for a, b in zip(contiguous[:3], strided[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)



def _offset_view(x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` as a view one element into rows of ``width`` (a multiple of 16 bytes): its rows
    stay 16-byte apart but its base is not 16-byte aligned."""
    wide = torch.zeros(x.shape[0], width, dtype=x.dtype, device=x.device)
    wide[:, 1:x.shape[1] + 1] = x
    return wide[:, 1:x.shape[1] + 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unaligned_base_reads_no_whole_groups(dtype):
    # rows of 300 classes 16 bytes apart (stride 304 / 312): unshifted, and read as whole
    # 16-byte groups (VECTOR) only when the base is aligned too; an offset view is not, and
    # its groups may straddle a page past a row's end. (The interpreter reads the few extra
    # elements harmlessly, so here the launch arguments are what shows it.)
    student, teacher = (x.to(DEVICE) for x in random_logits(3, 300, dtype=dtype, seed=14))
    target = random_target(3, num_classes=300).to(DEVICE)
    width = 304 if dtype == torch.float32 else 312
    config = LossConfig(k=7)
    launch = policy.fused_launch(300, student.element_size(), teacher.element_size(), lanes=8)
    buffers = [student.new_empty(3, dtype=torch.float32),
               student.new_empty(3, 3, dtype=torch.float32)]

    def vector(s, t, g_s, g_t):
        return launcher.kernel_arguments(s, t, target, config, *buffers, g_s, g_t, None,
                                         launch)["VECTOR"]

    aligned = [torch.empty(3, width, dtype=dtype, device=DEVICE)[:, :300] for _ in range(4)]
    assert vector(*aligned)
    for which in range(4):
        tensors = list(aligned)
        tensors[which] = _offset_view(tensors[which], width)
        assert tensors[which].data_ptr() % 16 != 0
        assert not vector(*tensors), f"tensor {which} (student, teacher, their gradients)"
    # and the offset views' losses and gradients are right
    launch_matches(_offset_view(student, width), _offset_view(teacher, width), target,
                   launch)
