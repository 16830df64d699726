"""An LDRLD distiller in mdistiller's shape (github.com/megvii-research/mdistiller), importable
without mdistiller.

mdistiller's models return ``(logits, features)``; its distillers subclass ``Distiller`` and
return, from ``forward_train(image, target, **kwargs)``, the student's logits and a dict of
losses that its trainer sums. To use this one there, copy ``LDRLD`` into
``mdistiller/distillers/``, register it in ``distiller_dict`` and add the ``CFG.LDRLD`` block
of ``CFG_DEFAULTS`` to ``mdistiller/engine/cfg.py``:

    CFG.LDRLD = CN()
    CFG.LDRLD.TOPK = 7
    CFG.LDRLD.TEMPERATURE = 4.0
    CFG.LDRLD.WARMUP = 20
    CFG.LDRLD.LOSS = CN()
    CFG.LDRLD.LOSS.CE_WEIGHT = 1.0
    CFG.LDRLD.LOSS.ALPHA = 10.5        # the local (dense pair + top-k) term
    CFG.LDRLD.LOSS.BETA = 7.0          # the remaining non-target classes
    CFG.LDRLD.ADW = CN()
    CFG.LDRLD.ADW.SCALE = 2.0
    CFG.LDRLD.ADW.DECAY = 0.05
    CFG.LDRLD.ADW.OFFSET = 1.5

``loss_ce + loss_kd`` is exactly ``ldrld_loss(...)`` with these settings (the CE term is
split off so that mdistiller logs it; the warm-up, as mdistiller's DKD does, scales the
distillation terms by min(epoch / WARMUP, 1)).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

import ldrld_kernels as lk

try:  # inside mdistiller
    from mdistiller.distillers._base import Distiller
except ImportError:  # standalone: the same interface
    class Distiller(torch.nn.Module):
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


CFG_DEFAULTS = SimpleNamespace(LDRLD=SimpleNamespace(
    TOPK=7, TEMPERATURE=4.0, WARMUP=20,
    LOSS=SimpleNamespace(CE_WEIGHT=1.0, ALPHA=10.5, BETA=7.0),
    ADW=SimpleNamespace(SCALE=2.0, DECAY=0.05, OFFSET=1.5),
))


def ldrld_options(cfg) -> dict:
    """The ``ldrld_loss`` keywords of a ``CFG.LDRLD`` block (without the CE weight)."""
    block = cfg.LDRLD
    return {"k": block.TOPK, "temperature": block.TEMPERATURE, "alpha": block.LOSS.ALPHA,
            "beta": block.LOSS.BETA, "adw_scale": block.ADW.SCALE,
            "adw_decay": block.ADW.DECAY, "adw_offset": block.ADW.OFFSET}


class LDRLD(Distiller):
    """Local Dense Relational Logit Distillation (Xu et al., ICCV 2025) for mdistiller."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, cfg=CFG_DEFAULTS):
        super().__init__(student, teacher)
        self.ce_loss_weight = cfg.LDRLD.LOSS.CE_WEIGHT
        self.warmup = cfg.LDRLD.WARMUP
        self.options = ldrld_options(cfg)

    def forward_train(self, image, target, **kwargs):
        logits_student, _ = self.student(image)
        with torch.no_grad():
            logits_teacher, _ = self.teacher(image)
        # the distillation terms (ce_weight 0); the cross-entropy apart, as mdistiller logs it
        loss_kd = lk.ldrld_loss(logits_student, logits_teacher, target, ce_weight=0.0,
                                **self.options)
        warmup = min(kwargs["epoch"] / self.warmup, 1.0) if "epoch" in kwargs else 1.0
        losses_dict = {
            "loss_ce": self.ce_loss_weight * torch.nn.functional.cross_entropy(
                logits_student.float(), target),
            "loss_kd": warmup * loss_kd,
        }
        return logits_student, losses_dict
