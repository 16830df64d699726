"""Vocabulary-parallel LDRLD over ``torch.distributed``: each rank holds a contiguous slice of
the classes of every row (a tensor-parallel LM head, as Megatron-LM splits it), never the
full row. DTensors placed ``Shard(-1)`` come here as their local slices (``dtensor``).

With u = s / T and v = t / T, what crosses ranks per row (``vectorized.ldrld_rows`` runs the
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
- Gradients are then local: every formula of ``vectorized`` needs only the row statistics
  above and the rank's own logits. The backward pass needs no collective.

Communication per call: rows x 4 k world numbers gathered (float64) and rows x 8 reduced
(6 without a target), plus one all-gather of a dozen numbers per rank that checks that the
ranks agree on the shapes and every setting; nothing that grows with C. No host
synchronisation: that check runs on host tensors when the group carries them (gloo, or
``backend="cpu:gloo,cuda:nccl"``), and is an asynchronous device assertion on an NCCL-only
group (``shard_of``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ldrld_kernels.pytorch.selection import top_k_indices
from ldrld_kernels.validation import check_k

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


@dataclass(frozen=True)
class Shard:
    """This rank's slice of the classes: global classes [offset, offset + local_classes) of
    ``num_classes``, in ``group``. ``offset`` and ``num_classes`` are 0-d device tensors when
    the group cannot carry host tensors (``shard_of``)."""

    group: ProcessGroup | None  # (None: the default group, as in torch.distributed)
    offset: int | torch.Tensor
    local_classes: int
    num_classes: int | torch.Tensor

    def all_reduce(self, tensor: torch.Tensor, op: object) -> torch.Tensor:
        dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return parts


_AGREED = ((0, "row count"), (2, "k"), (3, "temperature"), (4, "target (None on some ranks)"))


def checks_on_host(group: ProcessGroup, device: torch.device) -> bool:
    """Whether the ranks' agreement is checked with host tensors: on CPU, and with a group
    that carries them beside accelerator tensors (gloo or MPI, e.g. a group created with
    ``backend="cpu:gloo,cuda:nccl"``), which costs no device synchronisation."""
    backend = str(dist.get_backend(group)).lower()
    return device.type == "cpu" or "gloo" in backend or "mpi" in backend


def chunk_widths(num_classes: int, world: int) -> list[int]:
    """The slices' widths, rank by rank, of ``torch.chunk``'s layout of C classes, which a
    DTensor placed ``Shard(-1)`` has: ceil(C / world) each, the last ones narrower or empty."""
    size = -(-num_classes // world)
    return [min(size, max(0, num_classes - rank * size)) for rank in range(world)]


def shard_of(student: torch.Tensor, group: ProcessGroup, rows: int, k: int, temperature: float,
             has_target: bool, chunks_of: int | None = None,
             settings: tuple[tuple[str, float], ...] = ()) -> Shard:
    """This rank's ``Shard``, after one small all-gather that checks that every rank passes
    the same row count, k, temperature, target presence and ``settings`` (the call's other
    numbers, by name: alpha, beta, a layer's logit scale, ...), and that 2 <= k < C. On host
    tensors (``checks_on_host``): a ``ValueError`` on every rank when they do not, never a
    hang in a later collective. Otherwise (an NCCL-only group) the gather runs on the device
    and the check is an asynchronous assertion, like the target check on an accelerator:
    no host synchronisation, and a disagreement surfaces as a device-side error.

    ``chunks_of``: the whole row's C when the slices must be ``chunk_widths(C, world)`` (the
    local slices of a DTensor placed ``Shard(-1)``), checked the same way (one made by
    ``DTensor.from_local`` with another layout fails here); the offset and C are then host
    numbers on every group."""
    local = student.shape[-1]
    host = checks_on_host(group, student.device)
    values = (rows, local, k, temperature, float(has_target), *(v for _, v in settings))
    if host:
        mine = torch.tensor(values, dtype=torch.float64)
    else:
        # written on the device, each value the argument of a fill (no host tensor at all):
        # no copy from pageable memory (it would synchronise), no pinned buffer per call, nor
        # a shared one that a later call could overwrite before this call's copy has run; a
        # CUDA graph captures the values themselves (a captured copy would re-read a host
        # buffer freed after the capture)
        mine = torch.empty(len(values), dtype=torch.float64, device=student.device)
        for column, value in enumerate(values):
            mine[column].fill_(value)
    table = torch.stack(Shard(group, 0, local, local).all_gather(mine))
    rank = dist.get_rank(group)
    if not host:
        same = table == table[0]  # (slices: indexing with a list would copy it to the device)
        torch._assert_async(same[:, 0].all() & same[:, 2:].all(),
                            "ldrld_loss: the ranks of process_group disagree on the row count, "
                            "k, temperature, target presence or another setting")
        widths = table[:, 1].long()
        if chunks_of is not None:
            size = -(-chunks_of // len(widths))
            expected = (chunks_of - torch.arange(len(widths), device=widths.device) * size)
            torch._assert_async((widths == expected.clamp(0, size)).all(),
                                "ldrld_loss: the DTensors' local slices are not torch.chunk's "
                                "layout of their classes (Shard(-1))")
            check_k(k, chunks_of)
            return Shard(group, min(rank * size, chunks_of), local, chunks_of)
        num_classes = widths.sum()
        torch._assert_async(num_classes > k, "ldrld_loss: k must satisfy k < C")
        return Shard(group, widths[:rank].sum(), local, num_classes)
    for column, name in (*_AGREED, *((len(values) - len(settings) + i, name)
                                     for i, (name, _) in enumerate(settings))):
        ranks_values = table[:, column].tolist()
        if len(set(ranks_values)) > 1:
            raise ValueError(f"ldrld_loss: the ranks of process_group disagree on the {name}: "
                             f"{ranks_values} (rank by rank)")
    host_widths = [int(width) for width in table[:, 1].tolist()]
    layout = None if chunks_of is None else chunk_widths(chunks_of, len(host_widths))
    if layout is not None and host_widths != layout:
        raise ValueError(f"ldrld_loss: the DTensors' local slices have {host_widths} classes "
                         f"(rank by rank), not torch.chunk's {layout} of their {chunks_of} "
                         "classes, as Shard(-1) lays them out (a DTensor made by from_local "
                         "with another shape?)")
    check_k(k, sum(host_widths))
    return Shard(group, sum(host_widths[:rank]), local, sum(host_widths))


def global_top_k(key: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, k: int,
                 shard: Shard, classes: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global top-k classes of each row by ``key`` (this rank's slice of the ranking
    logits, or some of its classes: their global ids ``classes``, increasing along each row,
    larger than every class for empty columns), in rank order with ties to the smaller global
    class: (global classes, student logits, teacher logits), each (rows, k), the logits in
    float64 (exact)."""
    rows, local = key.shape
    found = min(k, local)
    index = top_k_indices(key, found) if found else key.new_zeros((rows, 0), dtype=torch.long)
    # (global class, key, s, t) per candidate; a slice narrower than k pads with a class past
    # every real one, which ranks after every real class of equal key
    candidates = torch.full((rows, k, 4), -torch.inf, dtype=torch.float64, device=key.device)
    candidates[:, :, 0] = shard.num_classes + torch.arange(k, device=key.device)
    chosen = index + shard.offset if classes is None else classes.gather(1, index)
    candidates[:, :found, 0] = chosen.to(torch.float64)
    for column, x in ((1, key), (2, student), (3, teacher)):
        candidates[:, :found, column] = x.gather(1, index).to(torch.float64)
    table = torch.cat(shard.all_gather(candidates), dim=1)  # (rows, k x world, 4)
    # in order of global class, so that top_k_indices' ties (smaller position) are ties to
    # the smaller class
    table = table.gather(1, table[:, :, 0].argsort(dim=1)[:, :, None].expand(-1, -1, 4))
    best = top_k_indices(table[:, :, 1], k)
    chosen = table.gather(1, best[:, :, None].expand(-1, -1, 4))
    return chosen[:, :, 0].long(), chosen[:, :, 2], chosen[:, :, 3]
