"""The LDRLD authors' own codebase: RepDistiller (github.com/HobbitLong/RepDistiller), on
which their released code (github.com/yema-web/LDRLD) is built.

Its criterion is ``distiller_zoo/LDRLD.py``'s ``LDRLD(alpha, beta, k, temperature,
ce_loss_weight)``, called as ``criterion_kd(logit_s, logit_t, target)`` in
``helper/loops.py`` and returning the whole loss, the cross-entropy included:

    ce_loss_weight * CE(s, y) + alpha * local + beta * rntk     (each the mean over rows)

``LDRLD`` here has the same constructor, call and result, computed by ``ldrld_loss``, so
the migration is one line, in ``distiller_zoo/__init__.py``:

    from ldrld_kernels.integrations.repdistiller import LDRLD   # was: from .LDRLD import LDRLD

Differences from the released class, all outside what RepDistiller's loops pass it: k = 2
gives the top-k group weight 1 (the released code an ADW weight: the spec's one deliberate
difference); targets equal to -100 are ignored rows (the released cross-entropy ignores
them, its distillation terms do not; CIFAR-100 and ImageNet labels never are); ties between
equal student logits go to the smaller class; it runs on CPU tensors too (the released code
calls ``.cuda()``).
"""

from __future__ import annotations

from typing import cast

import torch

from ldrld_kernels.api import ldrld_loss


class LDRLD(torch.nn.Module):
    """The released criterion: ``LDRLD(alpha, beta, k, temperature, ce_loss_weight)``;
    ``forward(logits_student, logits_teacher, target)`` returns the scalar loss
    ``ce_loss_weight * CE + alpha * local + beta * rntk``, averaged over the batch, with the
    paper's pair weights (``adw_scale`` 2, ``adw_decay`` 0.05, ``adw_offset`` 1.5)."""

    def __init__(self, alpha: float, beta: float, k: int, temperature: float,
                 ce_loss_weight: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.k = k
        self.temperature = temperature
        self.ce_loss_weight = ce_loss_weight

    def forward(self, logits_student: torch.Tensor, logits_teacher: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """``(batch, C)`` logits of each model and ``(batch,)`` labels; the loss, float32
        (float64 for float64 logits). The teacher's logits get a gradient only if they
        require one (RepDistiller's teacher runs under ``torch.no_grad()``)."""
        return cast(torch.Tensor, ldrld_loss(
            logits_student, logits_teacher, target, k=self.k, temperature=self.temperature,
            alpha=self.alpha, beta=self.beta, ce_weight=self.ce_loss_weight))

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"temperature={self.temperature}, ce_loss_weight={self.ce_loss_weight}")
