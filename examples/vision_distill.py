"""Train an image classifier with LDRLD from a teacher: the teacher first (cross-entropy), then
the student with ``LDRLDLoss`` (CIFAR-100 settings of the paper by default: alpha 10.5,
beta 7, T 4, k 7), each epoch with a progress bar and the loss parts.

    python examples/vision_distill.py --data PATH       # an image folder (needs torchvision)
    python examples/vision_distill.py --synthetic       # random images, no data (the test's)

``--data`` takes ``PATH/train/<class>/*.png`` and ``PATH/val/<class>/...`` (torchvision's
``ImageFolder`` layout), resized to ``--size`` pixels; ``--teacher FILE`` loads a trained
teacher's ``state_dict`` instead of training one.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import ldrld_kernels as lk


def convnet(width: int, classes: int) -> torch.nn.Module:
    """A small VGG-style network: three blocks of conv-BN-ReLU and pooling, then a linear
    classifier."""
    layers, channels = [], 3
    for block in range(3):
        out = width * 2**block
        layers += [torch.nn.Conv2d(channels, out, 3, padding=1, bias=False),
                   torch.nn.BatchNorm2d(out), torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(2)]
        channels = out
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(channels, classes))


def synthetic_data(classes: int, per_class: int, size: int, seed: int = 0):
    """Images that a classifier can learn: one random template per class plus noise."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 3, size, size, generator=generator)

    def split(count: int):
        labels = torch.arange(classes).repeat_interleave(count)
        images = templates[labels] + 1.5 * torch.randn(len(labels), 3, size, size,
                                                         generator=generator)
        return torch.utils.data.TensorDataset(images, labels)

    return split(per_class), split(max(1, per_class // 4))


def folder_data(path: str, size: int):
    try:
        from torchvision import datasets, transforms
    except ImportError:
        sys.exit("--data needs torchvision (pip install torchvision matching your torch)")
    transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.25] * 3)])
    return (datasets.ImageFolder(f"{path}/train", transform),
            datasets.ImageFolder(f"{path}/val", transform))


def progress(epoch: int, done: int, total: int, started: float, text: str) -> None:
    """One line per epoch, redrawn in place: a bar, the batches done and the running losses."""
    filled = 30 * done // max(total, 1)
    sys.stderr.write(f"\repoch {epoch} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} "
                     f"{time.perf_counter() - started:.0f}s {text}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def run_epoch(model, loader, optimizer, epoch: int, loss_fn) -> dict[str, float]:
    """One epoch; ``loss_fn(logits, images, labels)`` returns (loss, {name: value})."""
    model.train()
    totals: dict[str, float] = {}
    started = time.perf_counter()
    for batch, (images, labels) in enumerate(loader, 1):
        loss, parts = loss_fn(model(images), images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + float(value)
        progress(epoch, batch, len(loader), started,
                 " ".join(f"{name} {value / batch:.3f}" for name, value in totals.items()))
    return {name: value / max(len(loader), 1) for name, value in totals.items()}


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    right = total = 0
    for images, labels in loader:
        right += (model(images).argmax(dim=1) == labels).sum().item()
        total += len(labels)
    return right / max(total, 1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="an ImageFolder root with train/ and val/")
    source.add_argument("--synthetic", action="store_true", help="random class templates")
    parser.add_argument("--classes", type=int, default=10, help="--synthetic: classes")
    parser.add_argument("--per-class", type=int, default=64, help="--synthetic: images")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--teacher", help="a teacher state_dict to load instead of training")
    parser.add_argument("--teacher-width", type=int, default=32)
    parser.add_argument("--student-width", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=10.5)
    parser.add_argument("--beta", type=float, default=7.0)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("-k", type=int, default=7)
    args = parser.parse_args(argv)

    train_set, val_set = (synthetic_data(args.classes, args.per_class, args.size)
                          if args.synthetic else folder_data(args.data, args.size))
    classes = args.classes if args.synthetic else len(train_set.classes)
    torch.manual_seed(0)
    train_loader = torch.utils.data.DataLoader(train_set, args.batch_size, shuffle=True)
    val_loader = torch.utils.data.DataLoader(val_set, args.batch_size)

    teacher = convnet(args.teacher_width, classes)
    if args.teacher:
        teacher.load_state_dict(torch.load(args.teacher, map_location="cpu"))
    else:
        optimizer = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9,
                                    weight_decay=5e-4)
        for epoch in range(1, args.epochs + 1):
            def ce(logits, _images, labels):
                loss = F.cross_entropy(logits, labels)
                return loss, {"ce": loss.detach()}
            run_epoch(teacher, train_loader, optimizer, epoch, ce)
    teacher.eval()
    print(f"teacher: val accuracy {accuracy(teacher, val_loader):.4f}", flush=True)

    criterion = lk.LDRLDLoss(k=args.k, temperature=args.temperature, alpha=args.alpha,
                             beta=args.beta, return_parts=True)

    def ldrld(logits, images, labels):
        with torch.no_grad():
            teacher_logits = teacher(images)
        out = criterion(logits, teacher_logits, labels)
        return out.loss, {"loss": out.loss.detach(), "ce": out.ce, "local": out.local,
                          "rntk": out.rntk}

    student = convnet(args.student_width, classes)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(1, args.epochs + 1):
        parts = run_epoch(student, train_loader, optimizer, epoch, ldrld)
        print(f"student epoch {epoch}: " + ", ".join(f"{name} {value:.4f}"
                                                     for name, value in parts.items())
              + f", val accuracy {accuracy(student, val_loader):.4f}", flush=True)
    return {"teacher": accuracy(teacher, val_loader), "student": accuracy(student, val_loader),
            **parts}


if __name__ == "__main__":
    main()
