"""LDRLD in mdistiller's training loop (github.com/megvii-research/mdistiller).

In an mdistiller checkout, ``tools/train.py`` needs two lines before it merges the YAML
config:

    from ldrld_kernels.integrations.mdistiller import register
    register()   # distiller_dict["LDRLD"] and the CFG.LDRLD block

and a config then says ``DISTILLER.TYPE: "LDRLD"`` (and sets ``LDRLD.*`` as it likes). This
script runs mdistiller's step without mdistiller: the distiller returns the student's logits
and ``{"loss_ce", "loss_kd"}``, the trainer sums the losses (``loss_kd`` warmed up over
``CFG.LDRLD.WARMUP`` epochs), on models that return ``(logits, features)`` as mdistiller's do:

    python examples/mdistiller_ldrld.py
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from ldrld_kernels.integrations.mdistiller import CFG_DEFAULTS, LDRLD


class WithFeatures(nn.Module):
    """An MLP that returns ``(logits, features)``, as mdistiller's models do."""

    def __init__(self, inputs: int, width: int, classes: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(inputs, width), nn.ReLU())
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        feature = self.body(x)
        return self.head(feature), {"pooled_feat": feature, "feats": [feature]}


def train(distiller: LDRLD, epochs: int, steps: int, inputs: int, classes: int) -> list[dict]:
    """mdistiller's trainer, reduced: SGD on the student, the sum of the distiller's losses;
    the mean of each loss per epoch."""
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    log = []
    for epoch in range(1, epochs + 1):
        distiller.train()
        totals = {"loss_ce": 0.0, "loss_kd": 0.0}
        for _ in range(steps):
            image = torch.randn(32, inputs, generator=generator)
            target = torch.randint(0, classes, (32,), generator=generator)
            _, losses_dict = distiller(image=image, target=target, epoch=epoch)
            loss = sum(value.mean() for value in losses_dict.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for name, value in losses_dict.items():
                totals[name] += value.item() / steps
        log.append(totals)
    return log


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    inputs, classes = 48, 100
    distiller = LDRLD(WithFeatures(inputs, 16, classes, seed=1),
                      WithFeatures(inputs, 64, classes, seed=0), CFG_DEFAULTS)
    log = train(distiller, args.epochs, args.steps, inputs, classes)
    for epoch, totals in enumerate(log, 1):
        print(f"epoch {epoch}: loss_ce {totals['loss_ce']:.4f}, loss_kd {totals['loss_kd']:.4f}")
    return log


if __name__ == "__main__":
    main()
