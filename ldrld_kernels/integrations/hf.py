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
in the table but that carries a field known to transform logits elsewhere is refused, as are
a multimodal wrapper of a transforming text model and an output layer that is not a plain
``nn.Linear`` (``fused=False`` computes the models' own logits for those).

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


# model_type -> (the config field, what the causal LM does with it) for the families whose
# causal LM computes transform(lm_head(last_hidden_state)) (each read in transformers'
# modeling code): "cap" softcaps, "times" multiplies, "over" divides
TRANSFORMS = {
    **dict.fromkeys(("gemma2", "gemma3_text", "vaultgemma", "nanochat"),
                    ("final_logit_softcapping", "cap")),
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe"), ("logit_scale", "times")),
    **dict.fromkeys(("granite", "granite_swa", "granitemoe", "granitemoe_swa",
                     "granitemoeshared"), ("logits_scaling", "over")),
    "hyperclovax": ("logits_scaling", "times"),
    "falcon_h1": ("lm_head_multiplier", "times"),
}
# config fields that transform the logits in some family: refused outside TRANSFORMS
TRANSFORM_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling",
                    "lm_head_multiplier", "output_multiplier", "output_logit_soft_cap",
                    "logits_soft_cap", "logits_mup_width_multiplier", "dim_model_base",
                    "mup_enabled")


def output_layer(config: Any) -> OutputLayer:
    """The transform a model's config applies to its output layer's logits, for a
    ``model_type`` of ``TRANSFORMS`` or a plain one. A ``ValueError`` otherwise: a config (or
    its text config, in a multimodal model) outside ``TRANSFORMS`` that sets one of
    ``TRANSFORM_FIELDS``, or a text config of a ``TRANSFORMS`` family inside another model
    (whose wrapper may apply it otherwise)."""
    model_type = getattr(config, "model_type", None)
    if model_type in TRANSFORMS:
        field, use = TRANSFORMS[model_type]
        value = getattr(config, field)
        if use == "cap" and value is None:
            return OutputLayer()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not (math.isfinite(value) and value > 0):
            raise ValueError(f"model_type {model_type!r}: its config's {field} is {value!r}; "
                             "expected a finite number > 0")
        if use == "cap":
            return OutputLayer(softcap=float(value))
        return OutputLayer(logit_scale=float(value) if use == "times" else 1.0 / value)
    get_text_config = getattr(config, "get_text_config", None)
    text = get_text_config() if callable(get_text_config) else config
    for part in (config,) if text is config else (config, text):
        found = {name: getattr(part, name) for name in TRANSFORM_FIELDS
                 if getattr(part, name, None) not in (None, False)}
        if found or part is not config and getattr(part, "model_type", None) in TRANSFORMS:
            where = "its config" if part is config else \
                f"its text config ({getattr(part, 'model_type', None)!r})"
            raise ValueError(
                f"model_type {model_type!r} is not one whose output layer LDRLDDistillation "
                f"knows, and {where} sets {found or 'a transform of its logits'}: the fused "
                f"loss would not be the model's (fused=False computes the model's own logits). "
                f"Known: {sorted(TRANSFORMS)}")
    return OutputLayer()


# the batch's entries that are not the model's inputs
_NOT_MODEL_INPUTS = ("labels", "teacher_ids", "teacher_logprobs")


def _linear_head(model: Any) -> torch.nn.Linear:
    """The model's output layer, which the fused path computes as ``h W^T + b``: a
    ``TypeError`` for any other module (a learned per-class scale, a LoRA adapter)."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise TypeError(f"LDRLDDistillation(fused=True) computes the output layer as h W^T + b, "
                        f"and {type(model).__name__}'s is a {type(head).__name__}, whose forward "
                        f"may do more: use fused=False (the model's own logits)")
    return head


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
        # (what the model takes: input_ids, attention_mask, position_ids of packed batches, ...)
        body = {key: value for key, value in inputs.items() if key not in _NOT_MODEL_INPUTS}
        options = {**self.ldrld_options,
                   "reduction": "mean" if num_items_in_batch is None else "sum"}
        classes = self._classes(model)
        saved = None if self.teacher is not None else \
            SparseTeacher(inputs["teacher_ids"], inputs["teacher_logprobs"])
        if self.fused:
            if not hasattr(type(model), "get_decoder"):
                raise TypeError(
                    f"LDRLDDistillation(fused=True) runs the model's decoder and output layer "
                    f"itself, and got a {type(model).__name__} whose class has no "
                    f"get_decoder(): a DistributedDataParallel- or FSDP-style wrapper, whose own "
                    f"forward must run for its gradient synchronisation; use fused=False under "
                    f"such a wrapper")
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
            loss = loss / num_items_in_batch * self._devices_factor()
        return (loss, {}) if return_outputs else loss  # ({}: no logits to evaluate)

    def _devices_factor(self) -> int:
        """With ``num_items_in_batch`` counted over every device, the factor by which
        ``transformers.Trainer.compute_loss`` multiplies its own loss (to undo DDP's average
        of the gradients; ``average_tokens_across_devices``), mirrored; 1 outside a Trainer."""
        trainer: Any = self
        args: Any = getattr(trainer, "args", None)
        if not getattr(args, "average_tokens_across_devices", False) or not (
                getattr(trainer, "model_accepts_loss_kwargs", False)
                or getattr(trainer, "compute_loss_func", None)):
            return 1
        if getattr(args, "n_gpu", 1) > 1:
            return int(args.n_gpu)
        tensor_parallel = getattr(trainer, "get_tp_size", None)
        return trainer.accelerator.num_processes // (tensor_parallel() if tensor_parallel else 1)

    def _fused_loss(self, model: Any, body: dict, labels: torch.Tensor,
                    saved: SparseTeacher | None, classes: int | None,
                    options: dict) -> torch.Tensor:
        student = output_layer(model.config)
        head = _linear_head(model)
        hidden = model.get_decoder()(**body).last_hidden_state[:, :-1]
        teacher_options: dict[str, Any] = {}
        if saved is None:
            assert self.teacher is not None
            layer = output_layer(self.teacher.config)
            teacher_head = _linear_head(self.teacher)
            with torch.no_grad():
                teacher_hidden = self.teacher.get_decoder()(**body).last_hidden_state[:, :-1]
            teacher: tuple[Any, Any, Any] = (teacher_hidden, teacher_head.weight,
                                             teacher_head.bias)
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
                       dtype: torch.dtype = torch.float16,
                       num_classes: int | None = None) -> None:
    """Run ``teacher`` once over ``batches`` and save each with the teacher's top-``top_k`` at
    every position that predicts a token (``(batch, length - 1, top_k)``): ids as int32,
    log-probabilities at temperature 1 in ``dtype`` (6 K bytes a position in float16).
    ``num_classes``: the real vocabulary of a teacher whose output layer pads it (the
    log-probabilities are then over those classes, as the loss takes them)."""
    records = []
    teacher.eval()
    with torch.no_grad():
        for batch in batches:
            body = {key: value for key, value in batch.items()
                    if key not in _NOT_MODEL_INPUTS}
            logits = teacher(**body).logits[:, :-1, :num_classes]
            top = SparseTeacher.from_logits(logits, top_k)
            records.append({**batch, "teacher_ids": top.ids.to(torch.int32),
                            "teacher_logprobs": top.logprobs.to(dtype)})
    torch.save({"top_k": top_k, "batches": records}, path)


def load_teacher_top_k(path: str) -> list[dict]:
    """``save_teacher_top_k``'s batches, the ids as int64 (what ``SparseTeacher`` takes)."""
    saved = torch.load(path)
    return [{**batch, "teacher_ids": batch["teacher_ids"].long()}
            for batch in saved["batches"]]
