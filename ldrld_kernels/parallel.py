"""Vocabulary-parallel LDRLD over ``torch.distributed``: each rank holds a contiguous slice of
the classes of every row (a tensor-parallel LM head, as Megatron-LM splits it), never the
full row.

With u = s / T and v = t / T, what crosses ranks per row (``torch_path.ldrld_rows`` runs the
rest locally, on each rank's slice):

- Global top-k. Each rank takes its local top-k by the ranking logits (ties to the smaller
  class) and all-gathers (global class, student logit, teacher logit): k x world entries.
  Every rank then picks the same global top-k from them, ties to the smaller global class
  across rank boundaries too: the global top-k lies in the union of the local ones, since a
  class that loses locally to k others loses globally to them as well. The local term (pairs
  and top-k group) is computed on every rank from those k logits.
- The remaining classes and the cross-entropy need log-softmaxes over the whole row: each
  rank excludes the global top-k classes it holds (exactly: they are set to -inf, nothing
  is subtracted), then one all-reduce MAX of (max u, max v, max s), one all-reduce SUM of
  the sums of exp(x - max), and one all-reduce SUM of the rank's share of
  KL_rest = sum_R p (log p - log q) and of the target's logit (only its owner adds it).
- Gradients are then local: every formula of ``torch_path`` needs only the row statistics
  above and the rank's own logits. The backward pass needs no collective.

Communication per call: rows x 4 k world numbers gathered (float64) and rows x 8 reduced
(6 without a target), plus one all-gather of 5 numbers per rank that checks that the ranks
agree; nothing that grows with C. That check reads the gathered numbers on the host: one
host synchronisation per call on an accelerator (the other collectives are asynchronous).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This rank's slice of the classes: global classes [offset, offset + local_classes) of
    ``num_classes``, in ``group``."""

    group: object  # a torch.distributed ProcessGroup
    offset: int
    local_classes: int
    num_classes: int

    def all_reduce(self, tensor: torch.Tensor, op: object) -> torch.Tensor:
        dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return parts


def shard_of(student: torch.Tensor, group: object, rows: int, k: int, temperature: float,
             has_target: bool) -> Shard:
    """This rank's ``Shard``, after one small all-gather that checks that every rank passes
    the same row count, k, temperature and target presence: a ``ValueError`` on every rank
    when they do not, never a hang in a later collective."""
    local = student.shape[-1]
    mine = torch.tensor([rows, local, k, temperature, float(has_target)], dtype=torch.float64,
                        device=student.device)
    shard = Shard(group, 0, local, local)
    table = torch.stack(shard.all_gather(mine)).cpu()
    for column, name in ((0, "row count"), (2, "k"), (3, "temperature"),
                         (4, "target (None on some ranks)")):
        values = table[:, column].tolist()
        if len(set(values)) > 1:
            raise ValueError(f"ldrld_loss: the ranks of process_group disagree on the {name}: "
                             f"{values} (rank by rank)")
    widths = [int(width) for width in table[:, 1].tolist()]
    rank = dist.get_rank(group)
    return Shard(group, sum(widths[:rank]), local, sum(widths))


def global_top_k(key: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, k: int,
                 shard: Shard) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global top-k classes of each row by ``key`` (this rank's slice of the ranking
    logits), in rank order with ties to the smaller global class: (global classes,
    student logits, teacher logits), each (rows, k), the logits in float64 (exact)."""
    from ldrld_kernels.torch_path import top_k_indices

    rows, local = key.shape
    found = min(k, local)
    index = top_k_indices(key, found) if found else key.new_zeros((rows, 0), dtype=torch.long)
    # (global class, key, s, t) per candidate; a slice narrower than k pads with a class past
    # every real one, which ranks after every real class of equal key
    candidates = torch.full((rows, k, 4), -torch.inf, dtype=torch.float64, device=key.device)
    candidates[:, :, 0] = shard.num_classes + torch.arange(k, device=key.device)
    candidates[:, :found, 0] = (index + shard.offset).to(torch.float64)
    for column, x in ((1, key), (2, student), (3, teacher)):
        candidates[:, :found, column] = x.gather(1, index).to(torch.float64)
    table = torch.cat(shard.all_gather(candidates), dim=1)  # (rows, k x world, 4)
    # in order of global class, so that top_k_indices' ties (smaller position) are ties to
    # the smaller class
    table = table.gather(1, table[:, :, 0].argsort(dim=1)[:, :, None].expand(-1, -1, 4))
    best = top_k_indices(table[:, :, 1], k)
    chosen = table.gather(1, best[:, :, None].expand(-1, -1, 4))
    return chosen[:, :, 0].long(), chosen[:, :, 2], chosen[:, :, 3]
