"""The examples, each on a tiny configuration, and each adapter against the plain call (a
loss that silently computes another objective is the costliest failure for a user)."""

import importlib.util
import re

import pytest
import torch

import ldrld_kernels as lk
from tests.helpers import ROOT, run_python


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vision_distill_runs_and_logs_the_parts():
    result = run_python("examples/vision_distill.py", "--synthetic", "--epochs", "2",
                        "--per-class", "16", "--size", "16", "--classes", "8", timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"teacher: val accuracy \d\.\d{4}", result.stdout)
    for epoch in (1, 2):
        assert re.search(rf"student epoch {epoch}: loss \S+, ce \S+, local \S+, rntk \S+, "
                         r"val accuracy \d\.\d{4}", result.stdout), result.stdout
    assert "[##############################] 2/2" in result.stderr  # the progress bar


class _WithFeatures(torch.nn.Module):
    """A model as mdistiller's return them: (logits, features)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Linear(12, 20)

    def forward(self, x):
        return self.body(x), {"feats": [x]}


def test_mdistiller_distiller_is_the_plain_loss():
    module = _example("mdistiller_ldrld")
    student, teacher = _WithFeatures(0), _WithFeatures(1)
    distiller = module.LDRLD(student, teacher).train()
    assert not teacher.training and student.training
    assert distiller.get_learnable_parameters() == list(student.parameters())
    image = torch.randn(6, 12)
    target = torch.tensor([0, 3, 19, -100, 7, 7])
    logits, losses = distiller(image=image, target=target, epoch=100)
    assert set(losses) == {"loss_ce", "loss_kd"}
    options = module.ldrld_options(module.CFG_DEFAULTS)
    plain = lk.ldrld_loss(student(image)[0], teacher(image)[0].detach(), target,
                          ce_weight=module.CFG_DEFAULTS.LDRLD.LOSS.CE_WEIGHT, **options)
    torch.testing.assert_close(losses["loss_ce"] + losses["loss_kd"], plain)
    assert options == {"k": 7, "temperature": 4.0, "alpha": 10.5, "beta": 7.0,
                       "adw_scale": 2.0, "adw_decay": 0.05, "adw_offset": 1.5}
    # the warm-up scales the distillation terms only
    _, early = distiller(image=image, target=target, epoch=5)
    torch.testing.assert_close(early["loss_kd"], losses["loss_kd"] * 5 / 20)
    torch.testing.assert_close(early["loss_ce"], losses["loss_ce"])
    distiller.eval()
    torch.testing.assert_close(distiller(image=image), logits)


def test_hf_causal_lm_distillation():
    pytest.importorskip("transformers", reason="needs transformers (pip install -e '.[examples]')")
    module = _example("hf_causal_lm_distill")
    teacher = module.tiny_llama(hidden=32, layers=1, vocab=64, seed=0)
    student = module.tiny_llama(hidden=16, layers=1, vocab=64, seed=1)
    batch = module.toy_batch(4, 12, 64, torch.Generator().manual_seed(0))
    assert (batch["labels"] == -100).any()  # padded tails
    fused = module.LDRLDDistillation(teacher=teacher)
    plain = module.LDRLDDistillation(teacher=teacher, fused=False)
    # the fused-linear loss on the hidden states is ldrld_loss on the shifted logits
    torch.testing.assert_close(fused.compute_loss(student, batch),
                               plain.compute_loss(student, batch), rtol=1e-5, atol=1e-5)
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).logits
    by_hand = lk.ldrld_loss(logits[:, :-1], teacher_logits[:, :-1], batch["labels"][:, 1:],
                            k=7, temperature=2.0, reduction="sum")
    # num_items_in_batch: the sum over the batch's counted tokens divided by it
    torch.testing.assert_close(fused.compute_loss(student, batch, num_items_in_batch=50),
                               by_hand / 50, rtol=1e-5, atol=1e-5)
    loss, outputs = fused.compute_loss(student, batch, return_outputs=True)
    assert outputs is None and loss.dim() == 0
    # a few steps of distillation reduce the loss
    losses = module.train(student, fused.compute_loss, 15, 64, seed=2)
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_hf_causal_lm_offline_distillation(tmp_path):
    # a teacher's top-K saved to disk for a tiny corpus, then a student trained from the file
    pytest.importorskip("transformers", reason="needs transformers (pip install -e '.[examples]')")
    module = _example("hf_causal_lm_distill")
    teacher = module.tiny_llama(hidden=32, layers=1, vocab=64, seed=0)
    generator = torch.Generator().manual_seed(0)
    corpus = [module.toy_batch(4, 12, 64, generator) for _ in range(3)]
    path = tmp_path / "top.pt"
    module.save_teacher_top_k(teacher, corpus, str(path), 8)
    batches = module.load_teacher_top_k(str(path))
    assert len(batches) == 3
    first = batches[0]
    assert first["teacher_ids"].shape == first["teacher_logprobs"].shape == (4, 11, 8)
    assert first["teacher_ids"].dtype == torch.int64
    assert first["teacher_logprobs"].dtype == torch.float16
    student = module.tiny_llama(hidden=16, layers=1, vocab=64, seed=1)
    offline = module.LDRLDDistillation()  # (no teacher)
    # the loss from the file is ldrld_loss against the teacher's top-8 of the shifted logits
    logits = student(input_ids=first["input_ids"], attention_mask=first["attention_mask"]).logits
    by_hand = lk.ldrld_loss(logits[:, :-1], lk.SparseTeacher(first["teacher_ids"],
                                                             first["teacher_logprobs"]),
                            first["labels"][:, 1:], k=7, temperature=2.0)
    for fused in (True, False):
        loss = module.LDRLDDistillation(fused=fused).compute_loss(student, first)
        torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-5)
    # every class saved (in float32): the offline loss is the online one
    module.save_teacher_top_k(teacher, corpus[:1], str(path), 64, dtype=torch.float32)
    (whole,) = module.load_teacher_top_k(str(path))
    torch.testing.assert_close(offline.compute_loss(student, whole),
                               module.LDRLDDistillation(teacher=teacher).compute_loss(
                                   student, whole), rtol=1e-5, atol=1e-5)
    # a student trained from the file alone
    losses = module.train(student, offline.compute_loss, 15, 64, seed=2, batches=batches)
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_hf_causal_lm_offline_command(tmp_path):
    pytest.importorskip("transformers", reason="needs transformers (pip install -e '.[examples]')")
    path = tmp_path / "top.pt"
    result = run_python("examples/hf_causal_lm_distill.py", "--teacher-steps", "3",
                        "--student-steps", "3", "--offline", str(path), "--top-k", "8",
                        "--corpus-batches", "2", timeout=300)
    assert result.returncode == 0, result.stderr
    assert path.exists()
    assert re.search(r"saved the teacher's top-8 of \d+ positions", result.stdout)
    assert "student (LDRLD): loss" in result.stdout


def test_digits_distill_reports_every_student():
    pytest.importorskip("sklearn", reason="needs scikit-learn (pip install -e '.[examples]')")
    table = _example("digits_distill").main(["--seeds", "2", "--epochs", "2"])
    assert set(table) == {"teacher", "CE", "KD", "LDRLD"}
    assert all(len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
               for values in table.values())
    assert min(table["teacher"]) > 0.8
