"""``integrations.mdistiller``: the distiller's losses are the plain call's, and
``register`` adds it and its config block."""

from types import SimpleNamespace

import pytest
import torch

import ldrld_kernels as lk
from ldrld_kernels.integrations import mdistiller


class _WithFeatures(torch.nn.Module):
    """A model as mdistiller's return them: (logits, features)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Linear(12, 20)

    def forward(self, x):
        return self.body(x), {"feats": [x]}


def test_the_losses_are_the_plain_loss():
    student, teacher = _WithFeatures(0), _WithFeatures(1)
    distiller = mdistiller.LDRLD(student, teacher).train()
    assert not teacher.training and student.training
    assert distiller.get_learnable_parameters() == list(student.parameters())
    image = torch.randn(6, 12)
    target = torch.tensor([0, 3, 19, -100, 7, 7])
    logits, losses = distiller(image=image, target=target, epoch=100)
    assert set(losses) == {"loss_ce", "loss_kd"}
    options = mdistiller.ldrld_options(mdistiller.CFG_DEFAULTS)
    plain = lk.ldrld_loss(student(image)[0], teacher(image)[0].detach(), target,
                          ce_weight=mdistiller.CFG_DEFAULTS.LDRLD.LOSS.CE_WEIGHT, **options)
    torch.testing.assert_close(losses["loss_ce"] + losses["loss_kd"], plain)
    assert options == {"k": 7, "temperature": 4.0, "alpha": 10.5, "beta": 7.0,
                       "adw_scale": 2.0, "adw_decay": 0.05, "adw_offset": 1.5}
    # the warm-up scales the distillation terms only
    _, early = distiller(image=image, target=target, epoch=5)
    torch.testing.assert_close(early["loss_kd"], losses["loss_kd"] * 5 / 20)
    torch.testing.assert_close(early["loss_ce"], losses["loss_ce"])
    distiller.eval()
    torch.testing.assert_close(distiller(image=image), logits)


def test_a_config_block_sets_the_loss():
    cfg = SimpleNamespace(LDRLD=SimpleNamespace(
        TOPK=3, TEMPERATURE=2.0, WARMUP=1, LOSS=SimpleNamespace(CE_WEIGHT=0.5, ALPHA=2.0, BETA=3.0),
        ADW=SimpleNamespace(SCALE=1.0, DECAY=0.1, OFFSET=2.0)))
    student, teacher = _WithFeatures(0), _WithFeatures(1)
    image, target = torch.randn(5, 12), torch.tensor([1, 2, 3, 4, 5])
    _, losses = mdistiller.LDRLD(student, teacher, cfg).train()(image=image, target=target,
                                                                 epoch=3)
    plain = lk.ldrld_loss(student(image)[0], teacher(image)[0].detach(), target, k=3,
                          temperature=2.0, alpha=2.0, beta=3.0, ce_weight=0.5, adw_scale=1.0,
                          adw_decay=0.1, adw_offset=2.0)
    torch.testing.assert_close(losses["loss_ce"] + losses["loss_kd"], plain)


def test_register_adds_the_distiller_and_the_block():
    distillers: dict = {"KD": object}
    namespace = SimpleNamespace()
    mdistiller.register(distillers, namespace)
    assert distillers == {"KD": object, "LDRLD": mdistiller.LDRLD}
    assert mdistiller.ldrld_options(namespace) == mdistiller.ldrld_options(
        mdistiller.CFG_DEFAULTS)
    as_dict: dict = {}  # (yacs' CfgNode is a dict)
    mdistiller.register({}, as_dict)
    assert as_dict["LDRLD"] == mdistiller.DEFAULTS and as_dict["LDRLD"] is not mdistiller.DEFAULTS
    namespace.LDRLD.TOPK = 5  # a config that has the block keeps it
    mdistiller.register({}, namespace)
    assert namespace.LDRLD.TOPK == 5


def test_register_without_mdistiller_says_what_to_pass():
    try:
        import mdistiller as _  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pass distiller_dict= and cfg="):
            mdistiller.register()
    else:
        pytest.skip("mdistiller is installed")
