"""Distil a Hugging Face causal language model with LDRLD, from its hidden states.

Two tiny Llama models are built from configs (randomly initialised, nothing downloaded): a
teacher, first trained on a toy next-token task, and a smaller student distilled from it.
``LDRLDDistillation.compute_loss`` has the signature of ``transformers.Trainer.compute_loss``
(and TRL's trainers, which inherit it), so it drops into a trainer as a mixin:

    class DistillTrainer(LDRLDDistillation, transformers.Trainer):
        pass

    trainer = DistillTrainer(model=student, teacher=teacher, args=..., train_dataset=...)

What it computes, per batch: the labels shifted by one (the hidden state at position i
predicts the token at i + 1), positions labelled -100 ignored; the student's and the
teacher's last hidden states and output layers go to ``ldrld_fused_linear_loss``, so that
the (batch x sequence x vocabulary) logits are never materialized. With the trainer's
``num_items_in_batch`` (the counted tokens of the whole gradient-accumulation step) the loss
is the sum over this batch's counted tokens divided by it, as the trainer's own loss is;
without it, the mean over this batch's counted tokens.

Offline (``--offline PATH``): the teacher runs once over a corpus and its top-K at every
position goes to a file (``save_teacher_top_k``: ids as int32, log-probabilities as float16,
6 K bytes a token instead of 2 C for bfloat16 logits); the student then trains from that
file alone, no teacher in memory: ``LDRLDDistillation(teacher=None)`` reads each batch's
``teacher_ids`` and ``teacher_logprobs`` and passes ``lk.SparseTeacher(ids, logprobs)`` in
the teacher's output layer's place. (With ``transformers.Trainer``, keep those columns:
``TrainingArguments(remove_unused_columns=False)``.)

    python examples/hf_causal_lm_distill.py          # a few hundred steps, about a minute
    python examples/hf_causal_lm_distill.py --offline teacher_top16.pt

Needs transformers (``pip install -e ".[examples]"``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

import ldrld_kernels as lk

try:
    import transformers
except ImportError:  # pragma: no cover (the test skips without it)
    transformers = None


def _decoder_and_head(model):
    """The transformer body (hidden states, after its final norm) and the output layer."""
    return model.get_decoder(), model.get_output_embeddings()


class LDRLDDistillation:
    """``compute_loss`` for a causal LM student and a frozen ``teacher``, or with
    ``teacher=None`` the teacher's top-K saved offline, in each batch (``save_teacher_top_k``);
    ``ldrld_options`` are ``ldrld_loss`` keywords (the cross-entropy with the labels included,
    ``ce_weight``). ``fused=False`` materializes the logits and calls ``ldrld_loss`` instead
    (the same loss; the test compares the two)."""

    def __init__(self, *args, teacher=None, ldrld_options: dict | None = None,
                 fused: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = None if teacher is None else teacher.eval().requires_grad_(False)
        self.ldrld_options = {"k": 7, "temperature": 2.0, "ignore_index": -100,
                              **(ldrld_options or {})}
        self.fused = fused

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"][:, 1:]  # position i predicts the token at i + 1
        body = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask")}
        reduction = "mean" if num_items_in_batch is None else "sum"
        offline = self.teacher is None  # (the teacher's top-K, from the batch)
        if offline:
            saved = lk.SparseTeacher(inputs["teacher_ids"], inputs["teacher_logprobs"])
        if self.fused:
            decoder, head = _decoder_and_head(model)
            hidden = decoder(**body).last_hidden_state[:, :-1]
            if offline:
                teacher_layer = (saved, None, None)
            else:
                teacher_decoder, teacher_head = _decoder_and_head(self.teacher)
                with torch.no_grad():
                    teacher_hidden = teacher_decoder(**body).last_hidden_state[:, :-1]
                teacher_layer = (teacher_hidden, teacher_head.weight, teacher_head.bias)
            loss = lk.ldrld_fused_linear_loss(
                hidden, head.weight, teacher_layer[0], teacher_layer[1], labels,
                student_bias=head.bias, teacher_bias=teacher_layer[2], reduction=reduction,
                **self.ldrld_options)
        else:
            logits = model(**body).logits[:, :-1]
            if offline:
                teacher_logits = saved
            else:
                with torch.no_grad():
                    teacher_logits = self.teacher(**body).logits[:, :-1]
            loss = lk.ldrld_loss(logits, teacher_logits, labels, reduction=reduction,
                                 **self.ldrld_options)
        if num_items_in_batch is not None:
            loss = loss / num_items_in_batch
        return (loss, None) if return_outputs else loss


def tiny_llama(hidden: int, layers: int, vocab: int = 64, seed: int = 0):
    """A randomly initialised Llama of this size."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config)


def toy_batch(batch: int, length: int, vocab: int, generator: torch.Generator) -> dict:
    """Counting sequences (x, x + d, x + 2d, ... mod vocab), the tails of some padded (mask 0,
    label -100): the next token follows from the previous two."""
    start = torch.randint(0, vocab, (batch, 1), generator=generator)
    step = torch.randint(1, 4, (batch, 1), generator=generator)
    input_ids = (start + step * torch.arange(length)) % vocab
    attention_mask = torch.ones_like(input_ids)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    attention_mask[torch.arange(length) >= lengths[:, None]] = 0
    labels = torch.where(attention_mask.bool(), input_ids, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def save_teacher_top_k(teacher, batches: list[dict], path: str, top_k: int,
                       dtype: torch.dtype = torch.float16) -> None:
    """Run ``teacher`` once over ``batches`` and save each with the teacher's top-``top_k`` at
    every position that predicts a token (``(batch, length - 1, top_k)``): ids as int32,
    log-probabilities at temperature 1 in ``dtype``."""
    records = []
    teacher.eval()
    with torch.no_grad():
        for batch in batches:
            logits = teacher(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]).logits[:, :-1]
            top = lk.SparseTeacher.from_logits(logits, top_k)
            records.append({**batch, "teacher_ids": top.ids.to(torch.int32),
                            "teacher_logprobs": top.logprobs.to(dtype)})
    torch.save({"top_k": top_k, "batches": records}, path)


def load_teacher_top_k(path: str) -> list[dict]:
    """``save_teacher_top_k``'s batches, the ids as int64 (what ``SparseTeacher`` takes)."""
    saved = torch.load(path)
    return [{**batch, "teacher_ids": batch["teacher_ids"].long()}
            for batch in saved["batches"]]


def train(model, loss_fn, steps: int, vocab: int, seed: int, lr: float = 3e-3,
          batches: list[dict] | None = None) -> list[float]:
    """AdamW on fresh toy batches, or cycling through ``batches``; the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    given = itertools.cycle(batches) if batches else None
    for _ in range(steps):
        batch = next(given) if given else toy_batch(16, 24, vocab, generator)
        loss = loss_fn(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--student-steps", type=int, default=200)
    parser.add_argument("--offline", metavar="PATH",
                        help="save the teacher's top-K of a corpus to PATH, then train the "
                             "student from that file alone")
    parser.add_argument("--top-k", type=int, default=16, help="with --offline (default 16)")
    parser.add_argument("--corpus-batches", type=int, default=32,
                        help="with --offline: batches of 16 sequences saved (default 32)")
    args = parser.parse_args(argv)
    if transformers is None:
        sys.exit("hf_causal_lm_distill.py needs transformers: pip install -e '.[examples]'")
    vocab = 64
    teacher = tiny_llama(hidden=64, layers=2, vocab=vocab, seed=0)
    teacher_losses = train(teacher, lambda model, batch: model(**batch).loss,
                           args.teacher_steps, vocab, seed=1)
    student = tiny_llama(hidden=32, layers=1, vocab=vocab, seed=2)
    if args.offline:
        generator = torch.Generator().manual_seed(4)
        corpus = [toy_batch(16, 24, vocab, generator) for _ in range(args.corpus_batches)]
        save_teacher_top_k(teacher, corpus, args.offline, args.top_k)
        del teacher  # (the student trains from the file alone)
        tokens = sum(batch["labels"][:, 1:].numel() for batch in corpus)
        size = os.path.getsize(args.offline)
        print(f"saved the teacher's top-{args.top_k} of {tokens} positions to {args.offline}: "
              f"{size} bytes, {6 * args.top_k} bytes a position in the tensors (bfloat16 "
              f"logits: {2 * vocab})")
        student_losses = train(student, LDRLDDistillation().compute_loss, args.student_steps,
                               vocab, seed=3, batches=load_teacher_top_k(args.offline))
    else:
        distill = LDRLDDistillation(teacher=teacher)
        student_losses = train(student, distill.compute_loss, args.student_steps, vocab,
                               seed=3)
    for name, losses in (("teacher (CE)", teacher_losses), ("student (LDRLD)", student_losses)):
        print(f"{name}: loss {losses[0]:.3f} at the first step, {losses[-1]:.3f} at the last")
    return {"teacher": teacher_losses, "student": student_losses}


if __name__ == "__main__":
    main()
