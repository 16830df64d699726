"""LDRLD in RepDistiller's training loop (the authors' own codebase), on CIFAR-shaped data.

In a RepDistiller checkout the migration is one line, in ``distiller_zoo/__init__.py``:

    from ldrld_kernels.integrations.repdistiller import LDRLD   # was: from .LDRLD import LDRLD

and ``train_student.py --distill ldrld`` then builds the same criterion,
``LDRLD(opt.div, opt.beta, k=opt.k, temperature=opt.kd_T, ce_loss_weight=opt.cls)``, whose
result ``helper/loops.py`` uses as the whole loss. This script runs that step, as
``train_distill`` does (the teacher under ``no_grad``, SGD with Nesterov momentum and weight
decay), with a small ResNet pair on random 32 x 32 images (``--steps``, ``--classes``):

    python examples/repdistiller_ldrld.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from ldrld_kernels.integrations.repdistiller import LDRLD


class _Block(nn.Module):
    """A ResNet basic block (two 3x3 convolutions and a shortcut)."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential() if stride == 1 and inputs == outputs else \
            nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False),
                          nn.BatchNorm2d(outputs))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def cifar_resnet(width: int, classes: int = 100, seed: int = 0) -> nn.Module:
    """A small CIFAR-style ResNet (3x3 stem, three stages of one block, global pooling)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        _Block(width, width, 1), _Block(width, 2 * width, 2), _Block(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes))


def train_distill(student: nn.Module, teacher: nn.Module, criterion, batches,
                  lr: float = 0.05) -> list[float]:
    """RepDistiller's step: ``loss = criterion(logit_s, logit_t, target)`` (the whole loss),
    SGD(momentum 0.9, Nesterov, weight decay 5e-4); the loss of every step."""
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9,
                                weight_decay=5e-4, nesterov=True)
    student.train()
    teacher.eval()
    losses = []
    for images, target in batches:
        logit_s = student(images)
        with torch.no_grad():
            logit_t = teacher(images)
        loss = criterion(logit_s, logit_t, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def cifar_batches(steps: int, batch: int, classes: int, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=generator).to(dtype),
             torch.randint(0, classes, (batch,), generator=generator)) for _ in range(steps)]


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args(argv)
    teacher = cifar_resnet(32, args.classes, seed=0)
    student = cifar_resnet(8, args.classes, seed=1)
    # the paper's CIFAR-100 settings: alpha 10.5, beta 7, T 4, k 7, CE weight 1
    criterion = LDRLD(10.5, 7.0, k=7, temperature=4.0, ce_loss_weight=1.0)
    losses = train_distill(student, teacher, criterion,
                           cifar_batches(args.steps, args.batch, args.classes))
    print(f"{criterion}: loss {losses[0]:.3f} at the first step, {losses[-1]:.3f} at the last")
    return losses


if __name__ == "__main__":
    main()
