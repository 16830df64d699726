"""The oracle itself: hand-worked cases, invariants and the authors' released outputs."""

import math

import pytest
import torch

from ldrld_kernels import reference
from tests.helpers import GOLDEN, GOLDEN_IDS, check_golden, random_logits, random_target


def two_class_kl(t_i, t_j, s_i, s_j, T):
    """KL between the two-class softmaxes, written out by hand."""
    p = 1 / (1 + math.exp(-(t_i - t_j) / T))
    q = 1 / (1 + math.exp(-(s_i - s_j) / T))
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def softmax_kl(t, s, T):
    zt = sum(math.exp(x / T) for x in t)
    zs = sum(math.exp(x / T) for x in s)
    return sum(
        math.exp(a / T) / zt * (a / T - math.log(zt) - b / T + math.log(zs))
        for a, b in zip(t, s, strict=True)
    )


def weight(i, j):
    return 2.0 * math.exp(-0.05 * (i + j)) / (1.5 + abs(i - j))


# Student ranks the classes 2 > 0 > 3 > 1.
STUDENT = [1.0, -2.0, 3.0, 0.5]
TEACHER = [2.0, 0.0, 1.0, -1.0]


def test_hand_worked_k2():
    T = 2.0
    s, t = STUDENT, TEACHER
    pair = weight(1, 2) * two_class_kl(t[2], t[0], s[2], s[0], T)
    top = two_class_kl(t[2], t[0], s[2], s[0], T)  # the top-2 group is the pair again
    local = T**2 * (pair + top) / 2
    rntk = T**2 * two_class_kl(t[1], t[3], s[1], s[3], T)
    out = reference.ldrld_loss(torch.tensor([s], dtype=torch.float64),
                               torch.tensor([t], dtype=torch.float64),
                               k=2, temperature=T, alpha=0.7, beta=1.3, return_parts=True)
    assert out.local.item() == pytest.approx(local, rel=1e-12)
    assert out.rntk.item() == pytest.approx(rntk, rel=1e-12)
    assert out.loss.item() == pytest.approx(0.7 * local + 1.3 * rntk, rel=1e-12)
    assert out.ce.item() == 0.0


def test_hand_worked_k3_with_target():
    T = 1.5
    s, t = STUDENT, TEACHER
    ranked = [2, 0, 3]
    pairs = sum(
        weight(a + 1, b + 1)
        * two_class_kl(t[ranked[a]], t[ranked[b]], s[ranked[a]], s[ranked[b]], T)
        for a in range(3) for b in range(a + 1, 3)
    )
    top = softmax_kl([t[c] for c in ranked], [s[c] for c in ranked], T)
    local = T**2 * (pairs + top) / 4
    # only class 1 remains: a one-class softmax, KL 0
    ce = -(s[1] - math.log(sum(math.exp(x) for x in s)))
    out = reference.ldrld_loss(torch.tensor([s], dtype=torch.float64),
                               torch.tensor([t], dtype=torch.float64), torch.tensor([1]),
                               k=3, temperature=T, return_parts=True)
    assert out.local.item() == pytest.approx(local, rel=1e-12)
    assert out.rntk.item() == pytest.approx(0.0, abs=1e-15)
    assert out.ce.item() == pytest.approx(ce, rel=1e-12)
    assert out.loss.item() == pytest.approx(ce + local, rel=1e-12)


def test_identical_logits_give_zero():
    s, _ = random_logits(3, 50, dtype=torch.float64)
    out = reference.ldrld_loss(s, s.clone(), return_parts=True)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_every_term_nonnegative(k):
    s, t = random_logits(6, 40, dtype=torch.float64, seed=k)
    out = reference.ldrld_loss(s, t, random_target(6, num_classes=40), k=k, reduction="none",
                               return_parts=True)
    for term in out:
        assert (term >= 0).all()
    assert (out.local > 0).all() and (out.rntk > 0).all()


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=GOLDEN_IDS)
def test_released_code_outputs(case):
    check_golden(case, reference.ldrld_loss, torch.float64, rtol=1e-7)
