"""End-to-end distillation on real data that ships with scikit-learn: the handwritten digits
(1,797 8x8 images, 10 classes; no download).

A teacher MLP is trained with cross-entropy; then, from the same seed, three students of one
small architecture: cross-entropy only, classic KD (Hinton et al.: CE + T^2 KL of the
softened distributions, mdistiller's CIFAR weights) and LDRLD (``LDRLDLoss``). Each student's
test accuracy is reported as mean and standard deviation over the seeds (a fresh train/test
split, teacher and students per seed).

    python examples/digits_distill.py              # 5 seeds, about a minute on 2 CPU cores
    python examples/digits_distill.py --seeds 2 --epochs 5   # a quick run (the test's)

Needs scikit-learn (``pip install -e ".[examples]"``).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

import ldrld_kernels as lk

# LDRLD with the authors' CIFAR-100 settings but k (10 classes here, 100 there); KD with
# mdistiller's CIFAR-100 settings (CE weight 0.1, KD weight 0.9, T = 4)
LDRLD_OPTIONS = {"k": 5, "temperature": 4.0, "alpha": 10.5, "beta": 7.0, "ce_weight": 1.0}
KD_OPTIONS = {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}


def load_digits(seed: int, test_size: float = 0.5):
    """The digits, scaled to [0, 1], split in a stratified train and test half."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit("digits_distill.py needs scikit-learn: pip install -e '.[examples]'")
    data = sklearn_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    train, test = train_test_split(torch.arange(len(y)).numpy(), test_size=test_size,
                                   random_state=seed, stratify=y.numpy())
    return x[train], y[train], x[test], y[test]


def mlp(width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(),
                               torch.nn.Linear(width, width), torch.nn.ReLU(),
                               torch.nn.Linear(width, 10))


def kd_loss(student_logits, teacher_logits, target, temperature, ce_weight, kd_weight):
    """Hinton's KD as mdistiller computes it: CE + T^2 KL(softmax(t/T) || softmax(s/T))."""
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                  F.log_softmax(teacher_logits / temperature, dim=1), log_target=True,
                  reduction="batchmean")
    return ce_weight * F.cross_entropy(student_logits, target) + \
        kd_weight * temperature**2 * kl


def train(model, x, y, epochs: int, seed: int, loss_fn) -> torch.nn.Module:
    """Adam, minibatches of 64, a cosine learning rate; ``loss_fn(logits, indices)``."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * -(-len(y) // 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 64):
            batch = order[start:start + 64]
            loss = loss_fn(model(x[batch]), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return (model(x).argmax(dim=1) == y).float().mean().item()


def run_seed(seed: int, epochs: int, teacher_width: int, student_width: int) -> dict:
    x, y, x_test, y_test = load_digits(seed)
    teacher = train(mlp(teacher_width, seed), x, y, epochs, seed,
                    lambda logits, batch: F.cross_entropy(logits, y[batch]))
    with torch.no_grad():
        teacher_logits = teacher(x)
    criterion = lk.LDRLDLoss(**LDRLD_OPTIONS)
    losses = {
        "CE": lambda logits, batch: F.cross_entropy(logits, y[batch]),
        "KD": lambda logits, batch: kd_loss(logits, teacher_logits[batch], y[batch],
                                            **KD_OPTIONS),
        "LDRLD": lambda logits, batch: criterion(logits, teacher_logits[batch], y[batch]),
    }
    results = {"teacher": accuracy(teacher, x_test, y_test)}
    for name, loss_fn in losses.items():
        # every student starts from the same weights and sees the same batches
        student = train(mlp(student_width, 1000 + seed), x, y, epochs, seed, loss_fn)
        results[name] = accuracy(student, x_test, y_test)
    return results


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--teacher-width", type=int, default=256)
    parser.add_argument("--student-width", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(seed, args.epochs, args.teacher_width, args.student_width))
        print(f"seed {seed}: " + ", ".join(f"{name} {acc:.4f}" for name, acc in runs[-1].items()),
              flush=True)
    table = {name: [run[name] for run in runs] for name in runs[0]}
    print(f"\ntest accuracy over {args.seeds} seeds (teacher MLP width {args.teacher_width}, "
          f"students width {args.student_width}, {args.epochs} epochs):")
    print("| model | mean | std |\n|---|---|---|")
    for name, values in table.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {name} | {statistics.mean(values):.4f} | {std:.4f} |")
    return table


if __name__ == "__main__":
    main()
