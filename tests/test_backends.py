"""The table of backends: which run where, and the reason given where one cannot; ``auto``,
``ldrld check`` and the bench read the same answer."""

import re
import sys
import types

import pytest
import torch

from ldrld_kernels import backends
from ldrld_kernels.tools import bench
from tests.helpers import ROOT

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


def test_interpreter_without_numpy_says_so(monkeypatch):
    # numpy is no dependency of the package, but the Triton interpreter imports it
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "numpy", None)  # (import numpy fails)
    assert backends.available(torch.device("cpu")) == ["torch"]
    student = torch.randn(2, 10)
    with pytest.raises(ValueError, match="interpreter, which needs numpy"):
        backends.resolve_backend("triton", student, student)
    assert backends.resolve_backend("auto", student, student) == "torch"


def test_numpy_is_not_a_dependency():
    # the package never imports it (the test extra installs it, for the interpreter)
    tomllib = pytest.importorskip("tomllib")  # (Python 3.11)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(name.startswith("numpy") for name in pyproject["dependencies"])
    assert "numpy" in pyproject["optional-dependencies"]["test"]
    sources = "\n".join(path.read_text() for path in (ROOT / "ldrld_kernels").rglob("*.py"))
    assert not re.search(r"^\s*(import numpy|from numpy)", sources, re.MULTILINE)
