"""``hardware.on_device``: every launcher runs its kernels, and allocates its buffers, on its
tensors' device, not on the current one (logits on cuda:1 while cuda:0 is current).

Without a second GPU the test stands a recorder in for ``on_device`` and for each kernel and
allocating helper, and checks that each launch and allocation happens inside the recorder,
entered with the tensors' device.
"""

import contextlib
import dataclasses

import pytest
import torch

from ldrld_kernels.config import LossConfig
from ldrld_kernels.kernels import hardware, launcher, policy, scale, sharded
from ldrld_kernels.pytorch import parallel
from ldrld_kernels.tools.check import compare_with_reference
from tests.helpers import DEVICE, random_logits, random_target, requires_triton, wide_rows

pytestmark = requires_triton


@dataclasses.dataclass(frozen=True)
class _OneRank(parallel.Shard):
    """The whole row as the only rank's slice, its collectives the identity (no group)."""

    def all_reduce(self, tensor, op):
        return tensor

    def all_gather(self, tensor):
        return [tensor]


class _Recorder:
    """Stands in for ``hardware.on_device`` and records, at each launch and allocation that
    it wraps, the device entered around it (None outside)."""

    def __init__(self):
        self.current: list[torch.device] = []
        self.calls: list[tuple[str, torch.device | None]] = []

    @contextlib.contextmanager
    def __call__(self, device):
        self.current.append(device)
        try:
            yield
        finally:
            self.current.pop()

    def record(self, name):
        self.calls.append((name, self.current[-1] if self.current else None))

    def function(self, name, fn):
        def recorded(*args, **kwargs):
            self.record(name)
            return fn(*args, **kwargs)
        return recorded

    def kernel(self, name, kernel):
        recorder = self

        class Recorded:
            def __getitem__(self, grid):
                return recorder.function(name, kernel[grid])
        return Recorded()


@pytest.fixture
def recorder(monkeypatch):
    recorder = _Recorder()
    for module in (launcher, sharded, scale):
        monkeypatch.setattr(module, "on_device", recorder, raising=False)
    for module, name in ((launcher, "_ldrld_rows_kernel"),
                         (launcher, "_ldrld_split_stats_kernel"),
                         (launcher, "_ldrld_split_grads_kernel"),
                         (sharded, "_ldrld_split_stats_kernel"),
                         (sharded, "_ldrld_split_grads_kernel"),
                         (scale, "_scale_kernel")):
        monkeypatch.setattr(module, name, recorder.kernel(f"{module.__name__}.{name}",
                                                          getattr(module, name)))
    for module in (launcher, sharded):
        for name in ("allocate_outputs", "split_arguments"):
            monkeypatch.setattr(module, name, recorder.function(f"{module.__name__}.{name}",
                                                                getattr(module, name)))
    return recorder


def test_every_launch_and_allocation_on_the_tensors_device(recorder):
    student, teacher = (x.to(DEVICE) for x in random_logits(3, 300))
    target = random_target(3, num_classes=300).to(DEVICE)
    config = LossConfig(k=7)
    factor = torch.tensor(0.5, device=DEVICE)
    launcher.ldrld_rows(student, teacher, target, config, True, True, factor)
    wide = policy.split_launch(3, 300, 4, 4, hardware.INTERPRETER, lanes=8, splits=3,
                               wave_rows=2)  # two waves of two launches
    launcher.ldrld_rows(student, teacher, target, config, True, True, factor, launch=wide)
    sharded.ldrld_rows(student, teacher, target, config, True, True, factor,
                       _OneRank(None, 0, 300, 300))
    scale.scale_in_place(torch.ones(10, device=DEVICE), factor)

    launched = "ldrld_kernels.kernels.launcher."
    stats, grads = (launched + "_ldrld_split_stats_kernel",
                    launched + "_ldrld_split_grads_kernel")
    on_rank = "ldrld_kernels.kernels.sharded."
    assert [name for name, _ in recorder.calls] == [
        launched + "allocate_outputs", launched + "_ldrld_rows_kernel",
        launched + "allocate_outputs", launched + "split_arguments", stats, grads, stats, grads,
        on_rank + "allocate_outputs", on_rank + "split_arguments",
        on_rank + "_ldrld_split_stats_kernel", on_rank + "_ldrld_split_grads_kernel",
        "ldrld_kernels.kernels.scale._scale_kernel"]
    outside = [name for name, device in recorder.calls if device != student.device]
    assert not outside, f"not on the tensors' device {student.device}: {outside}"


def test_on_device_is_a_no_op_off_cuda():
    with hardware.on_device(torch.device("cpu")):
        assert torch.ones(1).device.type == "cpu"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("num_classes", [1000, 1271])
def test_logits_on_the_second_gpu(num_classes):
    """cuda:0 current, logits on cuda:1 (device_map="auto"'s output layer): the single
    launch, the wide rows and the backward scale (a random upstream gradient) against the
    float64 reference, and a one-rank sharded call against the whole rows."""
    device = torch.device("cuda", 1)
    student, teacher = (x.to(device) for x in random_logits(4, num_classes))
    target = random_target(4, num_classes=num_classes).to(device)
    config = LossConfig(k=7)
    with torch.cuda.device(0):
        for path in ("fused", "wide"):
            with wide_rows() if path == "wide" else contextlib.nullcontext():
                for reduction in ("mean", "none"):
                    result = compare_with_reference(
                        student, teacher, target, backend="triton", reduction=reduction,
                        generator=torch.Generator().manual_seed(0))
                    assert result.passed, (path, reduction, result)
        on_rank = sharded.ldrld_rows(student, teacher, target, config, True, False,
                                     None, _OneRank(None, 0, num_classes, num_classes))
        whole = launcher.ldrld_rows(student, teacher, target, config, True, False)
        assert torch.cuda.current_device() == 0
    for got, want in zip(on_rank[:3], whole[:3], strict=True):
        assert got.device == device
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
