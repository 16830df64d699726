"""Every bad input of the public API gets a TypeError or ValueError naming the argument."""

import math

import pytest
import torch

import ldrld_kernels as lk

S = torch.randn(4, 10)
T = torch.randn(4, 10)
Y = torch.randint(0, 10, (4,))


@pytest.mark.parametrize(
    "args,kwargs,error,name",
    [
        ((S.numpy(), T), {}, TypeError, "student_logits"),
        ((S, T.tolist()), {}, TypeError, "teacher_logits"),
        ((S.long(), T), {}, TypeError, "student_logits"),
        ((S, T.int()), {}, TypeError, "teacher_logits"),
        ((S, T[:, :9]), {}, ValueError, "same shape"),
        ((S, T.to("meta")), {}, ValueError, "same device"),
        ((S, T), {"k": 1}, ValueError, "k=1"),
        ((S, T), {"k": 10}, ValueError, "k=10"),
        ((torch.empty(4, 0), torch.empty(4, 0)), {"k": 3}, ValueError, "C = 0 classes"),
        ((torch.randn(2, 100), torch.randn(2, 100)), {"k": 65}, ValueError, "k=65"),
        ((S, T), {"k": 3.0}, TypeError, "k=3.0"),
        ((S, T), {"temperature": 0.0}, ValueError, "temperature=0.0"),
        ((S, T), {"temperature": -1}, ValueError, "temperature=-1"),
        ((S, T), {"temperature": math.inf}, ValueError, "temperature=inf"),
        ((S, T), {"temperature": math.nan}, ValueError, "temperature=nan"),
        ((S, T), {"temperature": "4"}, TypeError, "temperature='4'"),
        ((S, T), {"alpha": None}, TypeError, "alpha=None"),
        ((S, T), {"adw_decay": math.nan}, ValueError, "adw_decay=nan"),
        ((S, T, Y.int()), {}, TypeError, "target"),
        ((S, T, Y.float()), {}, TypeError, "target"),
        ((S, T, Y[:3]), {}, ValueError, "target"),
        ((S, T, Y[:, None]), {}, ValueError, "target"),
        ((S, T, Y.tolist()), {}, TypeError, "target"),
        ((S, T, torch.tensor([0, 1, 10, 2])), {}, ValueError, "target value 10"),
        ((S, T, torch.tensor([0, -1, 3, 2])), {}, ValueError, "target value -1"),
        ((S, T), {"reduction": "avg"}, ValueError, "reduction='avg'"),
        ((S, T), {"rank_by": "both"}, ValueError, "rank_by='both'"),
        ((S, T), {"backend": "cuda"}, ValueError, "backend='cuda'"),
        ((S, T), {"ignore_index": 1.5}, TypeError, "ignore_index=1.5"),
        ((S.double(), T), {"backend": "triton"}, TypeError, "float64"),
        ((torch.tensor(1.0), torch.tensor(1.0)), {}, ValueError, "student_logits"),
    ],
)
def test_bad_input(args, kwargs, error, name):
    with pytest.raises(error, match=name.replace("(", r"\(").replace("[", r"\[")):
        lk.ldrld_loss(*args, **kwargs)


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        lk.ldrld_loss(S, T, backend="triton")


def test_ignore_index_is_not_an_out_of_range_target():
    target = torch.tensor([0, -7, 3, -7])
    loss = lk.ldrld_loss(S, T, target, ignore_index=-7, reduction="none")
    assert loss[1] == 0 and loss[3] == 0 and loss[0] > 0


def test_module_validates_at_construction():
    for options, error, match in (({"k": 1}, ValueError, "k=1"),
                                  ({"temperature": 0}, ValueError, "temperature=0"),
                                  ({"rank_by": "both"}, ValueError, "rank_by='both'"),
                                  ({"reduction": "avg"}, ValueError, "reduction='avg'"),
                                  ({"backend": "cuda"}, ValueError, "backend='cuda'")):
        with pytest.raises(error, match=match):
            lk.LDRLDLoss(**options)
        with pytest.raises(error, match=match):
            lk.LDRLDFusedLinearLoss(**options)
    with pytest.raises(ValueError, match="k=10"):  # k against C: at the call, which knows C
        lk.LDRLDLoss(k=10)(S, T)
