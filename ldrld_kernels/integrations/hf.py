"""Hugging Face ``transformers.Trainer`` and TRL (causal language models): a
``compute_loss`` to mix into a trainer, from the models' hidden states and output layers,
with each output layer as its model runs it.

    class DistillTrainer(LDRLDDistillation, transformers.Trainer):   # or a TRL trainer
        pass

    trainer = DistillTrainer(model=student, teacher=teacher, args=..., train_dataset=...)

Per batch: the labels shifted by one (the hidden state at position i predicts the token at
i + 1), positions labelled -100 ignored; the student's and the teacher's last hidden states
and output layers go to ``ldrld_fused_linear_loss``, so that the (batch x sequence x
vocabulary) logits are never materialized. With the trainer's ``num_items_in_batch`` (the
counted tokens of the whole gradient-accumulation step) the loss is the sum over this
batch's counted tokens divided by it, as the trainer's own loss is; without it, the mean
over this batch's counted tokens.

**The output layer as the model runs it.** Some families transform the logits after the
output layer (``output_layer``): Gemma-2 and 3 cap them (``final_logit_softcapping``: cap *
tanh(z / cap)), Cohere scales them (``logit_scale``), Granite divides them
(``logits_scaling``). The loss reads these from each model's config on every call, so that
they cannot be forgotten, and passes them to the fused loss; a config whose family is not
in the table but that carries a field known to transform logits elsewhere is refused.

**Padded vocabularies.** Models of one tokenizer often pad their output layer to a multiple
of 64 or 128 rows (151,936 against 152,064): pass ``num_classes=`` (the shared real
vocabulary, e.g. ``len(tokenizer)``) and the loss runs over those classes, the padded rows
getting no gradient; different row counts without it are an error.

**Offline.** ``teacher=None``: each batch carries the teacher's top-K at every predicting
position (``teacher_ids``, ``teacher_logprobs``; ``save_teacher_top_k`` writes them), and
``SparseTeacher(ids, logprobs)`` takes the teacher's output layer's place. With
``transformers.Trainer``, keep those columns: ``TrainingArguments(remove_unused_columns=
False)``.

**Data parallel.** The fused path runs the model's decoder and output layer itself, which a
``DistributedDataParallel`` wrapper (a multi-GPU Trainer) does not allow: its own forward
must run for its gradient synchronisation. Under such a wrapper the fused path is a
``TypeError``; ``fused=False`` runs the wrapper and materializes the logits.

Nothing here imports ``transformers``: the models are used through their ``config``,
``get_decoder()`` and ``get_output_embeddings()``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, cast

import torch

from ldrld_kernels.api import ldrld_loss
from ldrld_kernels.fused_linear import ldrld_fused_linear_loss
from ldrld_kernels.sparse import SparseTeacher


class OutputLayer(NamedTuple):
    """A model's logits as ``softcap(logit_scale * (h W^T + b))``, softcap(z) = cap *
    tanh(z / cap) (None: no cap)."""

    logit_scale: float = 1.0
    softcap: float | None = None


def _softcap(config: Any) -> OutputLayer:
    return OutputLayer(softcap=config.final_logit_softcapping)


# model_type -> its output layer, for the families whose causal LM computes
# transform(lm_head(last_hidden_state)) (each read in transformers' modeling code)
TRANSFORMS = {
    **dict.fromkeys(("gemma2", "gemma3_text", "vaultgemma", "nanochat"), _softcap),
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe"),
                    lambda config: OutputLayer(logit_scale=config.logit_scale)),
    **dict.fromkeys(("granite", "granite_swa", "granitemoe", "granitemoe_swa",
                     "granitemoeshared"),
                    lambda config: OutputLayer(logit_scale=1.0 / config.logits_scaling)),
    "hyperclovax": lambda config: OutputLayer(logit_scale=config.logits_scaling),
    "falcon_h1": lambda config: OutputLayer(logit_scale=config.lm_head_multiplier),
}
# config fields that transform the logits in some family: refused outside TRANSFORMS
TRANSFORM_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling",
                    "lm_head_multiplier", "output_multiplier", "output_logit_soft_cap",
                    "logits_soft_cap", "logits_mup_width_multiplier", "dim_model_base",
                    "mup_enabled")


def output_layer(config: Any) -> OutputLayer:
    """The transform a model's config applies to its output layer's logits; a ``ValueError``
    for a config outside ``TRANSFORMS`` that sets one of ``TRANSFORM_FIELDS``."""
    model_type = getattr(config, "model_type", None)
    if model_type in TRANSFORMS:
        layer = TRANSFORMS[model_type](config)
        for name, value in (("logit scale", layer.logit_scale), ("softcap", layer.softcap)):
            if value is not None and not (isinstance(value, (int, float))
                                          and math.isfinite(value) and value > 0):
                raise ValueError(f"model_type {model_type!r}: its config gives the {name} "
                                 f"{value!r}; expected a finite number > 0")
        return OutputLayer(float(layer.logit_scale),
                           None if layer.softcap is None else float(layer.softcap))
    found = {name: getattr(config, name) for name in TRANSFORM_FIELDS
             if getattr(config, name, None) not in (None, False)}
    if found:
        raise ValueError(
            f"model_type {model_type!r} is not one whose output layer LDRLDDistillation "
            f"knows, and its config sets {found}, which transforms the logits in other "
            f"families: the loss would not be the model's. Known: {sorted(TRANSFORMS)}")
    return OutputLayer()


def _unwrap(model: Any) -> Any:
    """The model inside a DataParallel-style wrapper (to read its layers)."""
    return getattr(model, "module", model)


class LDRLDDistillation:
    """``compute_loss`` for a causal LM student and a frozen ``teacher``, or with
    ``teacher=None`` the teacher's top-K saved offline, in each batch (``save_teacher_top_k``);
    ``ldrld_options`` are ``ldrld_loss`` keywords (the cross-entropy with the labels included,
    ``ce_weight``; defaults here k = 7, temperature 2); ``num_classes`` the shared real
    vocabulary when the two output layers are padded differently. ``fused=False``
    materializes the models' own logits and calls ``ldrld_loss`` instead (the same loss; the
    tests compare the two)."""

    def __init__(self, *args: Any, teacher: torch.nn.Module | None = None,
                 ldrld_options: dict | None = None, fused: bool = True,
                 num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher: Any = None if teacher is None else teacher.eval().requires_grad_(False)
        self.ldrld_options = {"k": 7, "temperature": 2.0, "ignore_index": -100,
                              **(ldrld_options or {})}
        self.fused = fused
        self.num_classes = num_classes

    def _classes(self, student: Any) -> int | None:
        """The classes the loss runs over: ``num_classes``, or None when both output layers
        have the same rows (an error when they differ)."""
        rows = [_unwrap(student).get_output_embeddings().weight.shape[0]]
        if self.teacher is not None:
            rows.append(self.teacher.get_output_embeddings().weight.shape[0])
        if self.num_classes is None and len(set(rows)) > 1:
            raise ValueError(
                f"the student's output layer has {rows[0]} rows and the teacher's {rows[1]}: "
                f"pass LDRLDDistillation(num_classes=...), the vocabulary they share (e.g. "
                f"len(tokenizer)), and the loss runs over those classes")
        return self.num_classes

    def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: int | torch.Tensor | None = None) -> Any:
        labels = inputs["labels"][:, 1:]  # position i predicts the token at i + 1
        body = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask")}
        options = {**self.ldrld_options,
                   "reduction": "mean" if num_items_in_batch is None else "sum"}
        classes = self._classes(model)
        saved = None if self.teacher is not None else \
            SparseTeacher(inputs["teacher_ids"], inputs["teacher_logprobs"])
        if self.fused:
            if not hasattr(model, "get_decoder"):
                raise TypeError(
                    f"LDRLDDistillation(fused=True) runs the model's decoder and output layer "
                    f"itself, and got a {type(model).__name__} without get_decoder(): a "
                    f"DistributedDataParallel-style wrapper, whose own forward must run for its "
                    f"gradient synchronisation; use fused=False under such a wrapper")
            loss = self._fused_loss(model, body, labels, saved, classes, options)
        else:
            logits = model(**body).logits[:, :-1, :classes]
            if saved is None:
                with torch.no_grad():
                    teacher: Any = self.teacher(**body).logits[:, :-1, :classes]
            else:
                teacher = saved
            loss = cast(torch.Tensor, ldrld_loss(logits, teacher, labels, **options))
        if num_items_in_batch is not None:
            loss = loss / num_items_in_batch
        return (loss, None) if return_outputs else loss

    def _fused_loss(self, model: Any, body: dict, labels: torch.Tensor,
                    saved: SparseTeacher | None, classes: int | None,
                    options: dict) -> torch.Tensor:
        student = output_layer(model.config)
        head = model.get_output_embeddings()
        hidden = model.get_decoder()(**body).last_hidden_state[:, :-1]
        teacher_options: dict[str, Any] = {}
        if saved is None:
            assert self.teacher is not None
            layer = output_layer(self.teacher.config)
            teacher_head = self.teacher.get_output_embeddings()
            with torch.no_grad():
                teacher_hidden = self.teacher.get_decoder()(**body).last_hidden_state[:, :-1]
            teacher = (teacher_hidden, teacher_head.weight, teacher_head.bias)
            teacher_options = {"teacher_logit_scale": layer.logit_scale,
                               "teacher_softcap": layer.softcap}
        else:
            teacher = (saved, None, None)
        return cast(torch.Tensor, ldrld_fused_linear_loss(
            hidden, head.weight, teacher[0], teacher[1], labels, student_bias=head.bias,
            teacher_bias=teacher[2], student_logit_scale=student.logit_scale,
            student_softcap=student.softcap, num_classes=classes, **teacher_options,
            **options))


def save_teacher_top_k(teacher: Any, batches: list[dict], path: str, top_k: int,
                       dtype: torch.dtype = torch.float16) -> None:
    """Run ``teacher`` once over ``batches`` and save each with the teacher's top-``top_k`` at
    every position that predicts a token (``(batch, length - 1, top_k)``): ids as int32,
    log-probabilities at temperature 1 in ``dtype`` (6 K bytes a position in float16)."""
    records = []
    teacher.eval()
    with torch.no_grad():
        for batch in batches:
            logits = teacher(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]).logits[:, :-1]
            top = SparseTeacher.from_logits(logits, top_k)
            records.append({**batch, "teacher_ids": top.ids.to(torch.int32),
                            "teacher_logprobs": top.logprobs.to(dtype)})
    torch.save({"top_k": top_k, "batches": records}, path)


def load_teacher_top_k(path: str) -> list[dict]:
    """``save_teacher_top_k``'s batches, the ids as int64 (what ``SparseTeacher`` takes)."""
    saved = torch.load(path)
    return [{**batch, "teacher_ids": batch["teacher_ids"].long()}
            for batch in saved["batches"]]
