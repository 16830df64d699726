"""mdistiller (github.com/megvii-research/mdistiller): an ``LDRLD`` distiller and its
``CFG.LDRLD`` block.

mdistiller's models return ``(logits, features)``; its distillers subclass ``Distiller`` and
return, from ``forward_train(image, target, **kwargs)``, the student's logits and a dict of
losses that its trainer sums; ``tools/train.py`` builds the one that ``cfg.DISTILLER.TYPE``
names from ``distiller_dict``. ``register()`` (before ``cfg.merge_from_file``) adds ``LDRLD``
to ``distiller_dict`` and the block below to mdistiller's ``CFG``, so that a YAML config may
say ``DISTILLER.TYPE: "LDRLD"`` and set ``LDRLD.*``:

    CFG.LDRLD.TOPK = 7
    CFG.LDRLD.TEMPERATURE = 4.0
    CFG.LDRLD.WARMUP = 20               # epochs of the linear warm-up (as mdistiller's DKD)
    CFG.LDRLD.LOSS.CE_WEIGHT = 1.0
    CFG.LDRLD.LOSS.ALPHA = 10.5         # the local (dense pair + top-k) term
    CFG.LDRLD.LOSS.BETA = 7.0           # the remaining non-target classes
    CFG.LDRLD.ADW.SCALE = 2.0
    CFG.LDRLD.ADW.DECAY = 0.05
    CFG.LDRLD.ADW.OFFSET = 1.5

``loss_ce + loss_kd`` is ``ldrld_loss(...)`` with these settings: the cross-entropy is split
off so that mdistiller logs it (mdistiller's own ``F.cross_entropy``), and ``loss_kd``, the
distillation terms, is scaled by ``min(epoch / WARMUP, 1)`` as DKD's is.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, cast

import torch
import torch.nn.functional as F

from ldrld_kernels.api import ldrld_loss

try:  # inside mdistiller
    from mdistiller.distillers._base import Distiller  # type: ignore[import-not-found]
except ImportError:  # standalone: the same interface
    class Distiller(torch.nn.Module):  # type: ignore[no-redef]
        """mdistiller's base: a student that trains and a teacher that stays in eval mode."""

        def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module):
            super().__init__()
            self.student = student
            self.teacher = teacher

        def train(self, mode: bool = True):
            if not isinstance(mode, bool):
                raise TypeError("training mode is expected to be boolean")
            self.training = mode
            for module in self.children():
                module.train(mode)
            self.teacher.eval()
            return self

        def get_learnable_parameters(self):
            return [value for _, value in self.student.named_parameters()]

        def get_extra_parameters(self):
            return 0

        def forward_train(self, **kwargs):
            raise NotImplementedError

        def forward_test(self, image):
            return self.student(image)[0]

        def forward(self, **kwargs):
            if self.training:
                return self.forward_train(**kwargs)
            return self.forward_test(kwargs["image"])


# the CFG.LDRLD block's defaults (the paper's CIFAR-100 weights)
DEFAULTS: dict[str, Any] = {
    "TOPK": 7, "TEMPERATURE": 4.0, "WARMUP": 20,
    "LOSS": {"CE_WEIGHT": 1.0, "ALPHA": 10.5, "BETA": 7.0},
    "ADW": {"SCALE": 2.0, "DECAY": 0.05, "OFFSET": 1.5},
}


def _namespace(values: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(**{key: _namespace(value) if isinstance(value, dict) else value
                              for key, value in values.items()})


# a config holding only the block, for use without mdistiller (``cfg.LDRLD.TOPK``, ...)
CFG_DEFAULTS = SimpleNamespace(LDRLD=_namespace(DEFAULTS))


def ldrld_options(cfg: Any) -> dict[str, Any]:
    """The ``ldrld_loss`` keywords of a config's ``LDRLD`` block (without the CE weight)."""
    block = cfg.LDRLD
    return {"k": block.TOPK, "temperature": block.TEMPERATURE, "alpha": block.LOSS.ALPHA,
            "beta": block.LOSS.BETA, "adw_scale": block.ADW.SCALE,
            "adw_decay": block.ADW.DECAY, "adw_offset": block.ADW.OFFSET}


class LDRLD(Distiller):
    """Local Dense Relational Logit Distillation (Xu et al., ICCV 2025) for mdistiller:
    ``LDRLD(student, teacher, cfg)``, as mdistiller's ``tools/train.py`` builds a distiller."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module,
                 cfg: Any = CFG_DEFAULTS):
        super().__init__(student, teacher)
        self.ce_loss_weight = cfg.LDRLD.LOSS.CE_WEIGHT
        self.warmup = cfg.LDRLD.WARMUP
        self.options = ldrld_options(cfg)

    def forward_train(self, image, target, **kwargs):
        logits_student, _ = self.student(image)
        with torch.no_grad():
            logits_teacher, _ = self.teacher(image)
        # the distillation terms (ce_weight 0); the cross-entropy apart, as mdistiller logs it
        loss_kd = cast(torch.Tensor, ldrld_loss(logits_student, logits_teacher, target,
                                                ce_weight=0.0, **self.options))
        warmup = min(kwargs["epoch"] / self.warmup, 1.0) if "epoch" in kwargs else 1.0
        losses_dict = {
            "loss_ce": self.ce_loss_weight * F.cross_entropy(logits_student.float(), target),
            "loss_kd": warmup * loss_kd,
        }
        return logits_student, losses_dict


def register(distiller_dict: dict | None = None, cfg: Any = None) -> None:
    """Add ``LDRLD`` to ``distiller_dict`` and the ``LDRLD`` block to ``cfg`` (by default
    mdistiller's own, ``mdistiller.distillers.distiller_dict`` and
    ``mdistiller.engine.cfg.CFG``, which needs mdistiller installed). A yacs ``CfgNode``
    config gets the block as ``CfgNode``s, any other object as namespaces. Call it before
    the config is merged from a YAML file; a config that has the block keeps it."""
    if distiller_dict is None or cfg is None:
        try:
            from mdistiller.distillers import (  # type: ignore[import-not-found]
                distiller_dict as host_distillers,
            )
            from mdistiller.engine.cfg import CFG  # type: ignore[import-not-found]
        except ImportError as error:
            raise ImportError("register() without arguments adds LDRLD to mdistiller's own "
                              "distiller_dict and CFG: mdistiller is not importable; pass "
                              "distiller_dict= and cfg=") from error
        distiller_dict = host_distillers if distiller_dict is None else distiller_dict
        cfg = CFG if cfg is None else cfg
    distiller_dict["LDRLD"] = LDRLD
    if isinstance(cfg, dict):  # yacs' CfgNode is a dict that converts nested ones
        cfg.setdefault("LDRLD", type(cfg)(copy.deepcopy(DEFAULTS)))
    elif getattr(cfg, "LDRLD", None) is None:
        cfg.LDRLD = _namespace(DEFAULTS)
