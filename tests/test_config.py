"""One place per option (``config``): the defaults of every public signature are the config's,
the backends' table and the custom op follow its fields, and each field checks itself."""

import dataclasses
import inspect

import pytest
import torch

import ldrld_kernels as lk
from ldrld_kernels import backends, reference
from ldrld_kernels.config import BACKENDS, CallOptions, LossConfig

PUBLIC = {
    "ldrld_loss": lk.ldrld_loss,
    "LDRLDLoss": lk.LDRLDLoss,
    "ldrld_fused_linear_loss": lk.ldrld_fused_linear_loss,
    "reference.ldrld_loss": reference.ldrld_loss,  # (imports nothing of ours: a copy, held here)
}


def _defaults(cls) -> dict:
    return {field.name: field.default for field in dataclasses.fields(cls)}


@pytest.mark.parametrize("name", PUBLIC)
def test_public_defaults_are_the_configs(name):
    parameters = inspect.signature(PUBLIC[name]).parameters
    settings = _defaults(LossConfig)
    options = _defaults(CallOptions)
    if name == "reference.ldrld_loss":  # (the oracle has no backend and no process group)
        options = {key: options[key] for key in ("reduction", "return_parts")}
    for field, default in {**settings, **options}.items():
        assert field in parameters, f"{name} lacks {field}"
        assert parameters[field].default == default, (name, field)
        assert parameters[field].kind is inspect.Parameter.KEYWORD_ONLY or name == "LDRLDLoss"


def test_a_changed_default_is_caught(monkeypatch):
    # (the test above reads the config's defaults, not a copy of them)
    fields = {field.name: field for field in dataclasses.fields(LossConfig)}
    monkeypatch.setattr(fields["temperature"], "default", 2.0)
    with pytest.raises(AssertionError):
        test_public_defaults_are_the_configs("ldrld_loss")


def test_the_module_forms_keep_every_keyword():
    crit = lk.LDRLDLoss(k=5, temperature=2.0, rank_by="teacher", reduction="sum",
                        backend="torch", return_parts=True)
    assert crit.config == LossConfig(k=5, temperature=2.0, rank_by="teacher")
    assert crit.options == CallOptions(reduction="sum", backend="torch", return_parts=True)
    assert "rank_by='teacher'" in repr(crit) and "reduction='sum'" in repr(crit)


def test_backend_names_are_the_table_and_auto():
    assert BACKENDS[0] == "auto" and set(BACKENDS[1:]) == set(backends.BACKENDS)


def test_the_custom_op_takes_the_fields_in_order():
    pytest.importorskip("triton")
    from ldrld_kernels.kernels import ops

    schema = str(ops.ldrld_rows._opoverload._schema)
    names = [field.name for field in dataclasses.fields(LossConfig)]
    positions = [schema.index(f" {name},") for name in names]
    assert positions == sorted(positions), schema
    assert "str rank_by" in schema and "int k" in schema and "float temperature" in schema
    config = LossConfig(k=5, temperature=2.0, rank_by="teacher", ignore_index=3)
    assert LossConfig(*config.values()) == config


def test_numbers_are_the_numeric_fields():
    numbers = LossConfig(k=9, alpha=2.5).numbers()
    assert numbers.k == 9 and numbers.alpha == 2.5 and numbers.ignore_index == -100
    assert "rank_by" not in numbers._fields
    assert len(numbers) == len(dataclasses.fields(LossConfig)) - 1


@pytest.mark.parametrize("bad, error", [
    ({"reduction": "avg"}, ValueError), ({"backend": "cuda"}, ValueError),
])
def test_call_options_check_themselves(bad, error):
    with pytest.raises(error, match=next(iter(bad))):
        CallOptions(**bad)
    with pytest.raises(error, match=next(iter(bad))):
        lk.LDRLDLoss(**bad)
    with pytest.raises(error, match=next(iter(bad))):
        lk.ldrld_loss(torch.randn(2, 10), torch.randn(2, 10), **bad)
