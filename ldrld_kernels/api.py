"""Public entry points: ``ldrld_loss``, ``LDRLDLoss`` and ``LDRLDOutput``.

Validation, backend choice, the autograd Function and the reduction live here; the
per-row math lives in the backends (``pytorch.vectorized`` and the Triton kernels), which all
return row losses and the gradients of the row losses, computed in the forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch

from ldrld_kernels.backends import resolve_backend, rows_function, teacher_dtype
from ldrld_kernels.config import Backend, CallOptions, LossConfig, RankBy, Reduction
from ldrld_kernels.pytorch import dtensor, parallel
from ldrld_kernels.sparse import SparseTeacher
from ldrld_kernels.validation import check_sparse_values, check_target_values, validate


class LDRLDOutput(NamedTuple):
    """``loss`` is differentiable; ``ce``, ``local``, ``rntk`` are the unweighted reduced
    terms (``local`` and ``rntk`` include T^2), detached."""

    loss: torch.Tensor
    ce: torch.Tensor
    local: torch.Tensor
    rntk: torch.Tensor


class _LDRLDFunction(torch.autograd.Function):
    """The reduced loss of 2-D logits, in eager mode and under ``torch.compile`` alike. The
    backend computes the gradients in the forward pass (the Triton one through the custom op
    ``ops.ldrld_rows``), already divided by the row count for "mean"; backward scales them by
    the upstream gradient in place (so once; on the Triton path with ``ops.scale_``, which
    skips even reading them when that gradient is exactly 1, the usual ``loss.backward()``,
    without a host sync)."""

    @staticmethod
    def forward(ctx, student, teacher, target, config, backend, reduction, mean_scale, shard,
                grad_enabled):
        # (needs_input_grad says True under torch.no_grad() too: the caller's grad mode)
        need_s, need_t = (grad_enabled and need for need in ctx.needs_input_grad[:2])
        rows_fn = rows_function(backend, shard, sparse=isinstance(teacher, SparseTeacher))
        row_loss, parts, grad_s, grad_t = rows_fn(student, teacher, target, config, need_s,
                                                  need_t, mean_scale)
        loss, parts = _reduce(row_loss, parts, reduction, mean_scale)
        ctx.save_for_backward(grad_s, grad_t)
        ctx.dtypes = (student.dtype, teacher_dtype(teacher))
        ctx.backend, ctx.per_row = backend, reduction == "none"
        ctx.backward_done = False
        ctx.mark_non_differentiable(parts)
        return loss, parts

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_parts):
        if ctx.backward_done:
            raise RuntimeError(
                "ldrld_loss: backward ran twice through the same graph (retain_graph=True); "
                "its saved gradients are scaled in place, so compute the loss again instead"
            )
        ctx.backward_done = True
        scale = grad_loss[:, None] if ctx.per_row else grad_loss
        grads = []
        for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes, strict=True):
            if grad is None:
                pass
            elif grad.dtype != dtype:  # float16 logits: the float32 gradient, scaled, cast
                grad = scaled_cast(grad, scale, dtype)
            elif ctx.backend == "triton" and scale.dim() == 0:
                from ldrld_kernels.kernels import ops

                ops.scale_(grad, scale)
            else:
                _scale(grad, scale)
            grads.append(grad)
        return *grads, None, None, None, None, None, None, None


def _scale(grad: torch.Tensor, scale: torch.Tensor) -> None:
    """``grad *= scale`` in place, the product taken in float32 for 16-bit gradients (a float16
    cast of the scale would overflow at GradScaler's 65,536)."""
    if grad.element_size() < 4:
        grad.copy_(grad.float() * scale)
    else:
        grad.mul_(scale)


def scaled_cast(grad: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``grad * scale`` in ``grad``'s (wider) dtype, stored as ``dtype``: one pass, read and
    write, and the float16 result rounded once, from the product."""
    return torch.mul(grad, scale, out=torch.empty(grad.shape, dtype=dtype, device=grad.device))


def _mean_scale(target: torch.Tensor | None, rows: int, ignore_index: int,
                dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 / the number of rows that count (at least 1), as a 0-d tensor on the device: no
    host sync, and capturable in a CUDA graph."""
    if target is None:
        return torch.full((), 1.0 / max(rows, 1), dtype=dtype, device=device)
    return 1.0 / (target != ignore_index).sum().clamp_min(1).to(dtype)


def _reduce(row_loss: torch.Tensor, parts: torch.Tensor, reduction: str,
            mean_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if reduction == "none":
        return row_loss, parts
    row_loss, parts = row_loss.sum(), parts.sum(dim=0)
    if mean_scale is None:
        return row_loss, parts
    return row_loss * mean_scale, parts * mean_scale


def ldrld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | SparseTeacher,
    target: torch.Tensor | None = None,
    *,
    k: int = 7,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    ce_weight: float = 1.0,
    adw_scale: float = 2.0,
    adw_decay: float = 0.05,
    adw_offset: float = 1.5,
    rank_by: RankBy = "student",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    backend: Backend = "auto",
    return_parts: bool = False,
    process_group: object | None = None,
) -> torch.Tensor | LDRLDOutput:
    """LDRLD knowledge-distillation loss (Xu et al., ICCV 2025).

    Per row, with u = s / T and v = t / T for the student's and the teacher's logits s, t,
    pi the top-k classes by ``rank_by``'s logits and R the other C - k classes:

        local = T^2 (sum_{i<j<=k} w_ij KL(sm(v_pi_i, v_pi_j) || sm(u_pi_i, u_pi_j))
                     + KL(sm(v_pi) || sm(u_pi))) / (k(k-1)/2 + 1)
        rntk  = T^2 KL(sm(v_R) || sm(u_R))
        row   = ce_weight CE(s, y) + alpha local + beta rntk

    (sm the softmax, w_ij the pair weights of ``adw_weights``), reduced over the rows.

    Args:
        student_logits: ``(..., C)`` float32, float16 or bfloat16 (float64 on the PyTorch
            path); any strides. Or a DTensor placed ``Shard(-1)`` (see DTensors below).
        teacher_logits: ``(..., C)``, same shape and device; may differ in dtype. Gets a
            gradient when it requires grad (online / mutual distillation). Or a teacher
            saved offline, ``SparseTeacher(ids, logprobs)``: its top-K classes ``(..., K)``
            int64 and their log-probabilities at temperature 1 ``(..., K)``, ``k <= K <=
            C``; the row is completed by spreading the missing mass uniformly over the
            unlisted classes (``sparse``), and gets no gradient. With a
            ``process_group``, every rank passes the same global ids.
        target: ``(...)`` int64 class indices, or None for no cross-entropy term. Rows equal
            to ``ignore_index`` contribute nothing and get zero gradient.
        k: number of top classes (ranked by ``rank_by``) whose pairs are distilled,
            ``2 <= k < C`` and ``k <= 64``.
        temperature: softmax temperature ``T > 0``; the KL terms are scaled by ``T^2``.
        alpha, beta, ce_weight: weights of the local, the remaining-class and the CE terms.
        adw_scale, adw_decay, adw_offset: the pair weights, see ``adw_weights``.
        rank_by: ``"student"`` (as the released code) or ``"teacher"``.
        reduction: ``"mean"`` over the counted rows (0 when none counts), ``"sum"``, or
            ``"none"`` for a ``(...)`` tensor of row losses.
        backend: ``"auto"`` (Triton for CUDA tensors, else PyTorch), ``"triton"``, ``"torch"``.
        return_parts: also return the unweighted reduced terms as an ``LDRLDOutput``.
        process_group: a ``torch.distributed`` group over which the classes are split
            (vocabulary parallel, ``parallel``): each rank passes its contiguous slice
            ``(..., C_rank)`` of both logits, in rank order (slices may differ in width), and
            the same ``target`` of global class ids; every rank gets the same loss and the
            gradient of its slice. Each rank runs its slice on the backend chosen as
            without a group (``kernels.sharded`` for Triton). Not needed with DTensors; if
            given, it must span the ranks of their mesh (``ValueError`` otherwise).

    DTensors (PyTorch tensor parallelism, ``pytorch.dtensor``): the student's and the
    teacher's logits may be DTensors placed ``(Shard(-1),)`` (split along the classes) on the
    same 1-D device mesh, as a torchtitan-style output layer leaves them; ``target`` (and a
    ``SparseTeacher``'s ids and logprobs, global class ids) are then plain tensors or DTensors
    placed ``(Replicate(),)``. The call is the ``process_group`` one on their local slices over
    the mesh's group (``device_mesh.get_group()``); the slices follow ``torch.chunk`` as
    ``Shard`` does: ceil(C / n) classes per rank, the last ones narrower or empty. The loss
    (its row losses for ``"none"``, and the parts) is a plain tensor, the same on every rank;
    the gradients reach the DTensors as DTensors of their placement. Any other placement
    (``Replicate``, ``Partial``, ``Shard`` of another dim, a mesh of more dims) is a
    ``ValueError``; DTensor logits beside plain ones, a ``TypeError``.

    Returns:
        The loss, float32 (float64 for float64 inputs), or an ``LDRLDOutput``; plain
        tensors for DTensor logits too.

    Example::

        student_logits = student(images)                      # (batch, C)
        with torch.no_grad():
            teacher_logits = teacher(images)
        loss = ldrld_loss(student_logits, teacher_logits, labels, alpha=10.5, beta=7.0)
        loss.backward()
    """
    # (the keywords as given, each checked by its class: config)
    config, options = LossConfig.from_keywords(locals()), CallOptions.from_keywords(locals())
    return _loss(student_logits, teacher_logits, target, config, options)


class _Call(NamedTuple):
    """What a call needs beyond its tensors and settings, from ``prepare``."""

    backend: str  # the one that runs
    shard: parallel.Shard | None
    target: torch.Tensor | None  # flat
    mean_scale: torch.Tensor | None  # "mean": 1 / the counted rows, on the device


def prepare(student_logits: torch.Tensor, teacher_logits: torch.Tensor | SparseTeacher,
            target: torch.Tensor | None, config: LossConfig, options: CallOptions,
            chunks_of: int | None = None,
            settings: tuple[tuple[str, float], ...] = ()) -> _Call:
    """Validate a call on ``(..., C)`` logits (or stand-ins of their shape, dtype and device),
    agree with the other ranks of ``options.process_group``, choose the backend, and the
    mean's scale: shared by ``ldrld_loss`` and ``fused_linear``. ``chunks_of``: the row's C
    when the slices are a DTensor's (``parallel.shard_of``); ``settings``: the caller's
    numbers beyond the config's, by name, for the ranks to agree on."""
    process_group = options.process_group
    validate(student_logits, teacher_logits, target, k=config.k,
             vocab_slice=process_group is not None)  # (then shard_of checks k against C)
    rows = math.prod(student_logits.shape[:-1])
    shard = None
    if process_group is not None:
        # one small all-gather, which also checks that the ranks agree
        # (every setting agreed, not only those the collectives' shapes depend on: ranks
        # with another alpha would return another loss each)
        agreed = tuple((name, float(value)) for name, value in config.numbers()._asdict().items()
                       if name not in ("k", "temperature"))
        shard = parallel.shard_of(
            student_logits, process_group, rows, config.k, config.temperature,
            target is not None, chunks_of,
            (*agreed, ("rank_by", float(config.rank_by == "teacher")), *settings))
    backend = resolve_backend(options.backend, student_logits, teacher_logits)
    num_classes = student_logits.shape[-1] if shard is None else shard.num_classes
    flat_target = None
    if target is not None:
        flat_target = target.reshape(-1)
        check_target_values(flat_target, num_classes, config.ignore_index)
    if isinstance(teacher_logits, SparseTeacher):
        check_sparse_values(teacher_logits.ids, teacher_logits.logprobs, num_classes)
    mean_scale = None
    if options.reduction == "mean":
        dtypes = (student_logits.dtype, teacher_dtype(teacher_logits))
        dtype = torch.float64 if torch.float64 in dtypes else torch.float32
        mean_scale = _mean_scale(flat_target, rows, config.ignore_index, dtype,
                                 student_logits.device)
    return _Call(backend, shard, flat_target, mean_scale)


def output(loss: torch.Tensor, parts: torch.Tensor, lead: torch.Size, reduction: str,
           return_parts: bool) -> torch.Tensor | LDRLDOutput:
    """The reduced loss (per row in the leading shape for "none"), with its parts if asked."""
    if reduction == "none":
        loss, parts = loss.reshape(lead), parts.reshape(*lead, 3)
    if not return_parts:
        return loss
    ce, local, rntk = parts.unbind(dim=-1)
    return LDRLDOutput(loss, ce, local, rntk)


def _loss(student_logits, teacher_logits, target, config: LossConfig,
          options: CallOptions) -> torch.Tensor | LDRLDOutput:
    """``ldrld_loss`` with its keywords checked (``config``)."""
    local = dtensor.local_arguments(student_logits, teacher_logits, target,
                                    options.process_group)
    chunks_of = None
    if local is not None:  # DTensors: their local slices over the mesh's group
        student_logits, teacher_logits, target, group, chunks_of = local
        options = dataclasses.replace(options, process_group=group)
    call = prepare(student_logits, teacher_logits, target, config, options, chunks_of)
    lead, num_classes = student_logits.shape[:-1], student_logits.shape[-1]
    # (the row count spelled out: a rank's slice of the classes may be empty)
    rows = math.prod(lead)
    student_2d = student_logits.reshape(rows, num_classes)
    teacher_2d = teacher_logits.rows(rows) if isinstance(teacher_logits, SparseTeacher) \
        else teacher_logits.reshape(rows, num_classes)
    loss, parts = _LDRLDFunction.apply(student_2d, teacher_2d, call.target, config,
                                       call.backend, options.reduction, call.mean_scale,
                                       call.shard, torch.is_grad_enabled())
    return output(loss, parts, lead, options.reduction, options.return_parts)


class LDRLDLoss(torch.nn.Module):
    """``nn.Module`` form of ``ldrld_loss``: the keywords are fixed, and checked, at
    construction (``LDRLDLoss(k=0)`` raises there); ``forward(student_logits,
    teacher_logits, target=None)`` returns the loss.

    Example::

        criterion = LDRLDLoss(k=7, temperature=4.0, alpha=10.5, beta=7.0)
        loss = criterion(student(images), teacher(images).detach(), labels)
    """

    def __init__(
        self,
        k: int = 7,
        temperature: float = 4.0,
        alpha: float = 1.0,
        beta: float = 1.0,
        ce_weight: float = 1.0,
        adw_scale: float = 2.0,
        adw_decay: float = 0.05,
        adw_offset: float = 1.5,
        rank_by: RankBy = "student",
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        backend: Backend = "auto",
        return_parts: bool = False,
        process_group: object | None = None,
    ) -> None:
        super().__init__()
        self.config = LossConfig.from_keywords(locals())
        self.options = CallOptions.from_keywords(locals())

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | SparseTeacher,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor | LDRLDOutput:
        return _loss(student_logits, teacher_logits, target, self.config, self.options)

    def extra_repr(self) -> str:
        keywords = {**dataclasses.asdict(self.config), **dataclasses.asdict(self.options)}
        return ", ".join(f"{name}={value!r}" for name, value in keywords.items())
