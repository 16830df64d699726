"""Vocabulary-parallel LDRLD on CPU, with gloo:

    torchrun --standalone --nproc-per-node 2 examples/vocab_parallel.py

Each rank holds a contiguous slice of the vocabulary of a tensor-parallel LM head (the output of
Megatron-LM's ``ColumnParallelLinear`` with ``gather_output=False``), so it computes only its
slice of the student's and the teacher's logits, and passes them to ``ldrld_loss`` with
``process_group``. Every rank gets the same loss, and the gradient of its slice only.
"""

import sys

import torch
import torch.distributed as dist

import ldrld_kernels as lk


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    vocab, hidden, tokens = 1000, 64, 32
    torch.manual_seed(0)  # the same full heads on every rank, to compare with one process
    student_head = torch.randn(vocab, hidden) / hidden**0.5
    teacher_head = torch.randn(vocab, hidden) / hidden**0.5
    student_hidden, teacher_hidden = torch.randn(tokens, hidden), torch.randn(tokens, hidden)
    labels = torch.randint(0, vocab, (tokens,))
    labels[::5] = -100  # ignored positions

    # this rank's rows of the output layers: classes [start, start + width)
    widths = [vocab // world + (r < vocab % world) for r in range(world)]
    start = sum(widths[:rank])
    weight = student_head[start:start + widths[rank]].clone().requires_grad_()
    loss = lk.ldrld_loss(student_hidden @ weight.T,
                         teacher_hidden @ teacher_head[start:start + widths[rank]].T, labels,
                         process_group=dist.group.WORLD)
    loss.backward()

    whole = lk.ldrld_loss(student_hidden @ student_head.T, teacher_hidden @ teacher_head.T,
                          labels)
    # one write per line: the ranks share the terminal
    sys.stdout.write(f"rank {rank}: classes [{start}, {start + widths[rank]}) loss "
                     f"{loss.item():.9f} one-process {whole.item():.9f} weight grad "
                     f"{tuple(weight.grad.shape)}\n")
    sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
