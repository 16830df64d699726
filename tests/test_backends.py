"""The table of backends: which run where, and the reason given where one cannot; ``auto``,
``ldrld check`` and the bench read the same answer."""

import types

import pytest
import torch

from ldrld_kernels import backends, bench

CUDA = torch.device("cuda", 0)


def _logits(device):
    """What ``resolve_backend`` reads of the logits, for a device this machine may lack."""
    return types.SimpleNamespace(device=device, dtype=torch.float32)


@pytest.fixture
def rocm(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")


def test_rocm_takes_the_pytorch_path(rocm):
    # the kernels call libdevice.fast_log2f and pass maxnreg: NVIDIA only
    assert backends.available(CUDA) == ["torch"]
    assert "triton" not in bench.available_backends(CUDA, interpret=False)
    student = _logits(CUDA)
    assert backends.resolve_backend("auto", student, student) == "torch"
    with pytest.raises(ValueError, match=r"backend='triton'.*ROCm.*HIP 6\.2"):
        backends.resolve_backend("triton", student, student)


def test_rocm_interpreter_on_cpu_still_runs(rocm, monkeypatch):
    # the interpreter takes none of the CUDA-only calls
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "triton" in backends.available(torch.device("cpu"))


def test_cuda_build_takes_triton(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(torch.version, "hip", None)
    assert backends.available(CUDA) == ["torch", "triton"]
    assert backends.resolve_backend("auto", _logits(CUDA), _logits(CUDA)) == "triton"
