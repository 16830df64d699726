"""``integrations.hf``: the mixin's loss is ``ldrld_loss`` on the models' own logits (the
output layer as each family runs it), padded vocabularies, offline teachers."""

from types import SimpleNamespace

import pytest
import torch

import ldrld_kernels as lk
from ldrld_kernels.integrations import hf
from tests.helpers import load_example

transformers = pytest.importorskip(
    "transformers", reason="needs transformers (pip install -e '.[examples]')")

VOCAB = 64
# per model_type, the settings that make its output-layer transform matter (a softcap near
# the logits' size, a scale far from 1)
FAMILIES = {
    "llama": {},
    "gemma2": {"final_logit_softcapping": 0.5, "head_dim": 8},
    "gemma3_text": {"final_logit_softcapping": 0.5, "head_dim": 8},
    "vaultgemma": {"final_logit_softcapping": 0.5, "head_dim": 8},
    "nanochat": {"final_logit_softcapping": 0.5},
    "cohere": {"logit_scale": 6.0},
    "cohere2": {"logit_scale": 6.0},
    "cohere2_moe": {"logit_scale": 6.0},
    "granite": {"logits_scaling": 0.2},
    "granite_swa": {"logits_scaling": 0.2},
    "granitemoe": {"logits_scaling": 0.2},
    "granitemoe_swa": {"logits_scaling": 0.2},
    "granitemoeshared": {"logits_scaling": 0.2},
    "hyperclovax": {"logits_scaling": 5.0},
    "falcon_h1": {"lm_head_multiplier": 5.0},
}


def tiny(model_type: str, hidden: int, seed: int, vocab: int = VOCAB, **settings):
    """A randomly initialised causal LM of the family, from its config (no download)."""
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(
        model_type, vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=64, **{**FAMILIES.get(model_type, {}), **settings})
    return transformers.AutoModelForCausalLM.from_config(config)


def _batch(seed: int = 0, vocab: int = VOCAB):
    return load_example("hf_causal_lm_distill").toy_batch(
        4, 10, vocab, torch.Generator().manual_seed(seed))


def _by_hand(student, teacher, batch, classes=None, **options):
    """``ldrld_loss`` on the models' own (shifted) logits, and the student's gradients."""
    body = {key: value for key, value in batch.items() if key != "labels"}
    logits = student(**body).logits[:, :-1, :classes]
    with torch.no_grad():
        teacher_logits = teacher(**body).logits[:, :-1, :classes]
    loss = lk.ldrld_loss(logits, teacher_logits, batch["labels"][:, 1:],
                         **{"k": 7, "temperature": 2.0, **options})
    return loss, torch.autograd.grad(loss, list(student.parameters()), allow_unused=True)


def _mixin(student, batch, **options):
    loss = hf.LDRLDDistillation(**options).compute_loss(student, batch)
    return loss, torch.autograd.grad(loss, list(student.parameters()), allow_unused=True)


def _assert_same(got, want, rtol=2e-5):
    torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=rtol)
    for g, w in zip(got[1], want[1], strict=True):
        if w is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * max(1.0, w.abs().max()))


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_the_loss_of_the_models_own_logits(model_type):
    student = tiny(model_type, 32, seed=1)
    teacher = tiny(model_type, 48, seed=0)
    batch = _batch()
    expected = _by_hand(student, teacher, batch)
    _assert_same(_mixin(student, batch, teacher=teacher), expected)
    _assert_same(_mixin(student, batch, teacher=teacher, fused=False), expected)
    layer = hf.output_layer(student.config)
    assert layer != hf.OutputLayer() or model_type == "llama"  # (the transform is in play)


class _InATrainer(hf.LDRLDDistillation):
    """The mixin as a multi-device ``transformers.Trainer`` runs it (the attributes its own
    ``compute_loss`` reads): 4 processes, tensor-parallel pairs."""

    args = SimpleNamespace(average_tokens_across_devices=True, n_gpu=1)
    model_accepts_loss_kwargs = True
    accelerator = SimpleNamespace(num_processes=4)

    def get_tp_size(self):
        return 2


def test_families_mixed_and_the_trainers_reduction():
    student, teacher = tiny("granite", 32, seed=1), tiny("gemma2", 48, seed=0)
    batch = _batch(seed=3)
    # a packed batch: positions restart within the rows, which the models must be given
    batch["position_ids"] = torch.arange(10).remainder(6).expand(4, 10)
    loss, grads = _by_hand(student, teacher, batch, reduction="sum")
    distill = hf.LDRLDDistillation(teacher=teacher)
    got = distill.compute_loss(student, batch, num_items_in_batch=50)
    _assert_same((got, torch.autograd.grad(got, list(student.parameters()), allow_unused=True)),
                 (loss / 50, [g / 50 for g in grads]))
    # in a Trainer on several devices, times its processes over the tensor-parallel size
    torch.testing.assert_close(
        _InATrainer(teacher=teacher).compute_loss(student, batch, num_items_in_batch=50),
        got * 2)
    loss, outputs = distill.compute_loss(student, batch, return_outputs=True)
    assert outputs == {} and loss.dim() == 0  # (Trainer.prediction_step takes a dict)


def test_padded_vocabularies():
    # one tokenizer of 50 tokens; the student's output layer padded to 64 rows, the teacher's
    # to 128
    student, teacher = tiny("llama", 32, seed=1), tiny("cohere", 48, seed=0, vocab=128)
    batch = _batch(seed=2, vocab=50)
    with pytest.raises(ValueError, match="64 rows and the teacher's 128.*num_classes"):
        hf.LDRLDDistillation(teacher=teacher).compute_loss(student, batch)
    expected = _by_hand(student, teacher, batch, classes=50)
    got = _mixin(student, batch, teacher=teacher, num_classes=50)
    _assert_same(got, expected)
    _assert_same(_mixin(student, batch, teacher=teacher, num_classes=50, fused=False), expected)
    head = dict(zip([name for name, _ in student.named_parameters()], got[1], strict=True))
    weight = head["lm_head.weight"] if "lm_head.weight" in head else head[
        "model.embed_tokens.weight"]
    assert not weight[50:].any() and weight[:50].any()  # (no gradient to the padded rows)


def test_a_wrapped_model_needs_the_materialized_path():
    student, teacher = tiny("llama", 32, seed=1), tiny("llama", 48, seed=0)
    batch = _batch()
    wrapped = torch.nn.DataParallel(student)  # (on CPU: calls the module itself)
    with pytest.raises(TypeError, match="DataParallel whose class has no get_decoder.*"
                                        "fused=False"):
        hf.LDRLDDistillation(teacher=teacher).compute_loss(wrapped, batch)

    class Forwarding(torch.nn.Module):  # (FSDP's wrapper hands out its module's attributes)
        def __init__(self, module):
            super().__init__()
            self.module = module

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)

    assert hasattr(Forwarding(student), "get_decoder")
    with pytest.raises(TypeError, match="Forwarding whose class has no get_decoder"):
        hf.LDRLDDistillation(teacher=teacher).compute_loss(Forwarding(student), batch)
    torch.testing.assert_close(
        hf.LDRLDDistillation(teacher=teacher, fused=False).compute_loss(wrapped, batch),
        _by_hand(student, teacher, batch)[0])


def test_an_unknown_transform_is_refused():
    config = transformers.AutoConfig.for_model("llama")
    assert hf.output_layer(config) == hf.OutputLayer()
    config.lm_head_multiplier = 2.0  # (falcon_h1's field, on a family that is not falcon_h1)
    with pytest.raises(ValueError, match="'llama' is not one whose output layer.*"
                                         "lm_head_multiplier"):
        hf.output_layer(config)
    mpt = transformers.AutoConfig.for_model("mpt", logit_scale=0.5)
    with pytest.raises(ValueError, match="'mpt'.*logit_scale"):
        hf.output_layer(mpt)
    gemma = transformers.AutoConfig.for_model("gemma2", final_logit_softcapping=None)
    assert hf.output_layer(gemma) == hf.OutputLayer()
    for value in (float("inf"), 0.0):
        bad = transformers.AutoConfig.for_model("granite", logits_scaling=value)
        with pytest.raises(ValueError, match=f"'granite'.*logits_scaling is {value}; expected"):
            hf.output_layer(bad)
    # a multimodal model: the text config's transform, applied by a wrapper not in the table
    wrapped = transformers.AutoConfig.for_model(
        "gemma3", text_config={"final_logit_softcapping": 0.5})
    with pytest.raises(ValueError, match="'gemma3'.*text config.*final_logit_softcapping.*"
                                         "fused=False"):
        hf.output_layer(wrapped)


def test_an_output_layer_that_does_more_is_refused():
    student, teacher = tiny("llama", 32, seed=1), tiny("llama", 48, seed=0)

    class ScaledHead(torch.nn.Linear):  # (a learned per-class scale, as some heads have)
        def forward(self, x):
            return super().forward(x) * 2.0

    head = student.lm_head
    student.lm_head = ScaledHead(head.in_features, head.out_features, bias=False)
    with pytest.raises(TypeError, match="ScaledHead, whose forward may do more.*fused=False"):
        hf.LDRLDDistillation(teacher=teacher).compute_loss(student, _batch())


def test_offline_teacher(tmp_path):
    # a teacher's top-K saved to disk for a tiny corpus, then a student trained from the file
    example = load_example("hf_causal_lm_distill")
    teacher = tiny("gemma2", 48, seed=0)
    corpus = [_batch(seed) for seed in range(3)]
    path = tmp_path / "top.pt"
    hf.save_teacher_top_k(teacher, corpus, str(path), 8)
    batches = hf.load_teacher_top_k(str(path))
    assert len(batches) == 3
    first = batches[0]
    assert first["teacher_ids"].shape == first["teacher_logprobs"].shape == (4, 9, 8)
    assert first["teacher_ids"].dtype == torch.int64
    assert first["teacher_logprobs"].dtype == torch.float16
    student = tiny("cohere", 32, seed=1)
    # the loss from the file is ldrld_loss against the teacher's top-8 of the shifted logits
    logits = student(input_ids=first["input_ids"], attention_mask=first["attention_mask"]).logits
    by_hand = lk.ldrld_loss(logits[:, :-1], lk.SparseTeacher(first["teacher_ids"],
                                                             first["teacher_logprobs"]),
                            first["labels"][:, 1:], k=7, temperature=2.0)
    for fused in (True, False):
        loss = hf.LDRLDDistillation(fused=fused).compute_loss(student, first)
        torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-5)
    # every class saved (in float32): the offline loss is the online one
    hf.save_teacher_top_k(teacher, corpus[:1], str(path), VOCAB, dtype=torch.float32)
    (whole,) = hf.load_teacher_top_k(str(path))
    torch.testing.assert_close(hf.LDRLDDistillation().compute_loss(student, whole),
                               hf.LDRLDDistillation(teacher=teacher).compute_loss(
                                   student, whole), rtol=1e-5, atol=1e-5)
    # a student trained from the file alone
    losses = example.train(student, hf.LDRLDDistillation().compute_loss, 15, VOCAB, seed=2,
                           batches=batches)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
