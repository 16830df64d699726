"""Distil a Hugging Face causal language model with LDRLD, from its hidden states.

Two tiny Llama models are built from configs (randomly initialised, nothing downloaded): a
teacher, first trained on a toy next-token task, and a smaller student distilled from it
with ``ldrld_kernels.integrations.hf.LDRLDDistillation.compute_loss``, which has the
signature of ``transformers.Trainer.compute_loss`` (and TRL's trainers, which inherit it),
so that it drops into a trainer as a mixin:

    class DistillTrainer(LDRLDDistillation, transformers.Trainer):
        pass

    trainer = DistillTrainer(model=student, teacher=teacher, args=..., train_dataset=...)

Offline (``--offline PATH``): the teacher runs once over a corpus and its top-K at every
position goes to a file (``save_teacher_top_k``: ids as int32, log-probabilities as float16,
6 K bytes a token instead of 2 C for bfloat16 logits); the student then trains from that
file alone, no teacher in memory (``LDRLDDistillation(teacher=None)``).

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

from ldrld_kernels.integrations.hf import (
    LDRLDDistillation,
    load_teacher_top_k,
    save_teacher_top_k,
)

try:
    import transformers
except ImportError:  # pragma: no cover (the test skips without it)
    transformers = None


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
