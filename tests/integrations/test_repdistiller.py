"""``integrations.repdistiller.LDRLD``: the released criterion's constructor, call and
result (the released outputs, the plain call, and training steps that end equal)."""

import pytest
import torch

import ldrld_kernels as lk
from ldrld_kernels import reference
from ldrld_kernels.integrations.repdistiller import LDRLD
from tests.helpers import GOLDEN, GOLDEN_IDS, load_example, random_logits, random_target


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=GOLDEN_IDS)
def test_released_outputs(case):
    criterion = LDRLD(case["alpha"], case["beta"], k=case["k"],
                      temperature=case["temperature"], ce_loss_weight=case["ce_weight"])
    student = torch.tensor(case["student_logits"], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor(case["teacher_logits"], dtype=torch.float64)
    loss = criterion(student, teacher, torch.tensor(case["target"]))
    loss.backward()
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(case["loss"], rel=1e-7)
    expected = torch.tensor(case["student_grad"], dtype=torch.float64)
    torch.testing.assert_close(student.grad, expected, rtol=1e-7,
                               atol=1e-7 * expected.abs().max().item())


@pytest.mark.parametrize(("alpha", "beta", "k", "temperature", "ce_loss_weight"),
                         [(10.5, 7.0, 7, 4.0, 1.0), (1.0, 8.0, 3, 2.0, 0.1),
                          (9.0, 0.0, 5, 1.0, 0.0)])
def test_the_plain_call_with_the_mapped_settings(alpha, beta, k, temperature, ce_loss_weight):
    student, teacher = random_logits(16, 100, dtype=torch.float64, seed=k)
    target = random_target(16, num_classes=100, seed=k)
    criterion = LDRLD(alpha, beta, k, temperature, ce_loss_weight)  # positional, as released
    grads = []
    for loss_fn in (criterion, lambda s, t, y: lk.ldrld_loss(
            s, t, y, k=k, temperature=temperature, alpha=alpha, beta=beta,
            ce_weight=ce_loss_weight)):
        leaf = student.clone().requires_grad_()
        loss = loss_fn(leaf, teacher, target)
        grads.append((loss, *torch.autograd.grad(loss, leaf)))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert "alpha=" in repr(criterion) and f"k={k}" in repr(criterion)


def test_sgd_steps_end_with_the_same_weights():
    """A small CIFAR-shaped ResNet pair, five steps of RepDistiller's loop (float64): the
    student's weights with this criterion equal those with the reference's loss (the
    released formula, group by group) to float64 rounding, and have moved."""
    example = load_example("repdistiller_ldrld")
    teacher = example.cifar_resnet(16, 100, seed=0).double()
    batches = example.cifar_batches(5, 8, 100, seed=3, dtype=torch.float64)
    settings = {"alpha": 10.5, "beta": 7.0, "k": 7, "temperature": 4.0}
    released = lambda s, t, y: reference.ldrld_loss(s, t, y, ce_weight=1.0, **settings)
    weights = []
    for criterion in (LDRLD(ce_loss_weight=1.0, **settings), released):
        student = example.cifar_resnet(8, 100, seed=1).double()
        losses = example.train_distill(student, teacher, criterion, batches)
        weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    start = torch.cat([p.detach().flatten()
                       for p in example.cifar_resnet(8, 100, seed=1).double().parameters()])
    assert (weights[0] - start).abs().max() > 1e-3  # (the steps moved them)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-9, atol=1e-11)
    assert losses[-1] < losses[0]
