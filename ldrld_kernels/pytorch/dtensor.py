"""DTensor arguments (PyTorch's own tensor parallelism): logits placed ``Shard(-1)`` on a 1-D
device mesh, as a torchtitan-style output layer leaves them (what ``loss_parallel`` takes for
cross-entropy), are the vocabulary-parallel call of ``parallel`` on their local slices, over
the mesh's process group.

- Placements. Student and teacher logits: ``Shard(-1)`` (of the class dim) on the same 1-D
  mesh, whose ranks are in increasing order (the group's rank order, in which ``parallel``
  lays out the slices). Target and a ``SparseTeacher``'s ids and log-probabilities: plain
  tensors or DTensors placed ``Replicate()``, holding global class ids. Anything else is a
  ``ValueError`` here, before any collective, the same on every rank.
- Layout. ``Shard(-1)`` splits the C classes as ``torch.chunk`` does: ceil(C / n) per rank,
  the last ones narrower or empty (C = 40 over 3 ranks: 14, 14, 12); ``parallel`` takes any
  contiguous slices in rank order, and ``shard_of`` checks that the local slices are that
  layout (``chunks_of``).
- Gradients. ``DTensor.to_local`` is differentiable: the gradient of a local slice reaches
  the DTensor as a DTensor of its placement on its mesh.

``torch.distributed.tensor`` is never imported here: a DTensor exists only once the module
that defines it has been imported (which takes longer than the whole package), and PyTorch
may be built without ``torch.distributed``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.distributed as dist

from ldrld_kernels.sparse import SparseTeacher

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

# where DTensor is defined (torch.distributed._tensor before PyTorch 2.5)
_MODULES = ("torch.distributed.tensor", "torch.distributed._tensor")
_WORKS = ("ldrld_loss takes logits (student and teacher) placed (Shard(-1),), sharded along "
          "the classes (the last dim) on a 1-D mesh, and a target (and a SparseTeacher's ids "
          "and logprobs) as plain tensors or placed (Replicate(),)")


def _module() -> Any:
    """The imported module that defines ``DTensor``, or None: then no DTensor exists."""
    for name in _MODULES:
        module = sys.modules.get(name)
        if getattr(module, "DTensor", None) is not None:
            return module
    return None


class Local(NamedTuple):
    """A call's arguments as the vocabulary-parallel path takes them: this rank's tensors, the
    mesh's group and the classes of the whole row."""

    student: torch.Tensor
    teacher: torch.Tensor | SparseTeacher
    target: torch.Tensor | None
    group: ProcessGroup
    num_classes: int


def local_arguments(student: object, teacher: object, target: object,
                    process_group: ProcessGroup | None) -> Local | None:
    """The local slices of DTensor arguments and the mesh's group, or None when no argument
    is a DTensor. ``process_group`` may be given too, if it spans the mesh's ranks."""
    module = _module()
    if module is None:
        return None
    named = [("student_logits", student), ("target", target)]
    if isinstance(teacher, SparseTeacher):
        named += [("teacher.ids (SparseTeacher)", teacher.ids),
                  ("teacher.logprobs (SparseTeacher)", teacher.logprobs)]
    else:
        named.append(("teacher_logits", teacher))
    distributed = [name for name, value in named if isinstance(value, module.DTensor)]
    if not distributed:
        return None
    if not isinstance(student, module.DTensor):
        raise TypeError(f"ldrld_loss: {distributed[0]} is a DTensor but student_logits is a "
                        f"{type(student).__name__}: pass DTensors for both logits, or plain "
                        "tensors throughout")
    mesh_ranks = _check_sharded(module, "student_logits", student)
    if isinstance(teacher, SparseTeacher):
        ids, logprobs = teacher
        local_teacher: torch.Tensor | SparseTeacher = SparseTeacher(
            _replicated(module, "teacher.ids (SparseTeacher)", ids),
            _replicated(module, "teacher.logprobs (SparseTeacher)", logprobs))
    elif not isinstance(teacher, module.DTensor):
        raise TypeError(f"ldrld_loss: student_logits is a DTensor but teacher_logits is a "
                        f"{type(teacher).__name__}: pass both as DTensors placed (Shard(-1),) "
                        "on the same mesh (or both as plain tensors)")
    else:
        ranks = _check_sharded(module, "teacher_logits", teacher)
        if ranks != mesh_ranks:
            raise ValueError("ldrld_loss: student_logits and teacher_logits must be on meshes of "
                             f"the same ranks, got {mesh_ranks} and {ranks}")
        if teacher.shape != student.shape:
            raise ValueError("ldrld_loss: student_logits and teacher_logits must have the same "
                             f"shape, got {tuple(student.shape)} and {tuple(teacher.shape)} "
                             "(DTensors: the global shapes)")
        local_teacher = teacher.to_local()
    group = student.device_mesh.get_group()
    if process_group is not None:
        given, meshes = (dist.get_process_group_ranks(g) for g in (process_group, group))
        if given != meshes:
            raise ValueError(f"ldrld_loss: process_group spans ranks {given} but the DTensors' "
                             f"mesh spans {meshes}: leave process_group out with DTensors (the "
                             "mesh's group is used)")
    local_target = None if target is None else _replicated(module, "target", target)
    return Local(student.to_local(), local_teacher, local_target, group, student.shape[-1])


def _check_sharded(module: Any, name: str, logits: Any) -> list[int]:
    """``logits`` placed ``Shard(-1)`` on a 1-D mesh in rank order: the mesh's ranks, or a
    ``ValueError``."""
    mesh, placements = logits.device_mesh, tuple(logits.placements)
    placement = placements[0]
    # (type, not isinstance: _StridedShard, FSDP's with TP's, derives from Shard in some
    # versions and lays out the classes otherwise)
    if mesh.ndim != 1 or type(placement) is not module.Shard or \
            placement.dim not in (-1, logits.dim() - 1):
        raise ValueError(f"ldrld_loss: {name} is a DTensor placed {placements} on a "
                         f"{mesh.ndim}-D mesh of shape {tuple(mesh.shape)}; {_WORKS}")
    ranks = mesh.mesh.flatten().tolist()
    if ranks != sorted(ranks):
        raise ValueError(f"ldrld_loss: {name}'s mesh lists its ranks as {ranks}; ldrld_loss "
                         "needs them in increasing order (its process group's order, in "
                         "which the slices are laid out)")
    return ranks


def _replicated(module: Any, name: str, tensor: Any) -> Any:
    """A plain tensor, or a DTensor placed ``Replicate()`` (on each dim of any mesh) as this
    rank's copy of it, or a ``ValueError``."""
    if not isinstance(tensor, module.DTensor):
        return tensor
    placements = tuple(tensor.placements)
    if not all(placement.is_replicate() for placement in placements):
        raise ValueError(f"ldrld_loss: {name} is a DTensor placed {placements}; {_WORKS}")
    return tensor.to_local()
