"""How often the LDRLD kernels' loops and conditional blocks run: the names that their
``# trips:`` and ``# runs:`` tags use, for ``ldrld profile`` (``tools/profile``), which counts
each loop's machine code times its trips. Chunk loops have counts from the layout; the
exact-selection fallback's rate and rounds depend on the data and are simulated here on rows
of a ``policy.ROW_MODELS`` model."""

from __future__ import annotations

import torch

from ldrld_kernels.kernels.policy import ROW_MODELS, chunk_bounds


def loop_counts(classes: int, lanes: int, vec: int, shifted: bool,
                split_chunks: int = 0) -> dict[str, float]:
    """The trips of the kernel's chunk loops per program, averaged over a row's splits (one
    range per row when ``split_chunks`` is 0)."""
    first, last, end = chunk_bounds(classes, lanes, vec, shifted)
    step = split_chunks or end
    ranges = [(lo, min(lo + step, end)) for lo in range(0, end, step)]
    counts: dict[str, float] = {"full_pairs": 0.0, "full_odd": 0.0, "masked_tail_chunks": 0.0,
                                "all_chunks": 0.0}
    for lo, hi in ranges:
        full = max(min(hi, last) - max(lo, first), 0)
        counts["full_pairs"] += full // 2 / len(ranges)
        counts["full_odd"] += full % 2 / len(ranges)
        counts["masked_tail_chunks"] += max(hi - max(lo, last), 0) / len(ranges)
        counts["all_chunks"] += (hi - lo) / len(ranges)
    return counts


def row_logits(rows_model: str, samples: int, classes: int, starts: torch.Tensor, period: int,
               generator: torch.Generator) -> torch.Tensor:
    """``samples`` rows of ``rows_model`` (``policy.ROW_MODELS`` says what each is), each the
    classes ``starts[i]`` to ``starts[i] + classes`` (a split of a wider row starts past 0;
    splits start on whole chunks, multiples of ``period``, which is LANES x VEC), float32."""
    logits = torch.randn(samples, classes, generator=generator)
    if rows_model == "clustered":
        for start in starts.unique().tolist():
            ids = torch.arange(start, start + classes, dtype=torch.float64)
            logits[starts == start] = 2 * logits[starts == start] - torch.log1p(ids).float()
    elif rows_model == "spaced":
        phase = torch.randint(0, period, (samples, 1), generator=generator)
        columns = phase + period * torch.arange(-(-classes // period))[None, :]
        logits.scatter_add_(1, columns.clamp(max=classes - 1),
                            (columns < classes).float() * 8.0)
    elif rows_model != "normal":
        raise ValueError(f"rows_model must be one of {ROW_MODELS}, got {rows_model!r}")
    return logits


def fallback(logits: torch.Tensor, k: int, lanes: int, vec: int, kpl: int,
             rows: int) -> tuple[float, float]:
    """The exact selection on these rows, in programs of ``rows`` of them each (consecutive):
    the fraction of programs that run it (those with a row where a key that fell off some
    thread's list of its ``kpl`` best groups reaches the row's k best; group g of VEC classes
    is thread g mod LANES's), and the mean number of its rounds where it runs (k less the
    fewest certain winners of the program's unsure rows: those above every dropped key)."""
    samples, classes = logits.shape
    groups = -(-classes // vec)
    keys = torch.nn.functional.pad(logits, (0, groups * vec - classes), value=-float("inf"))
    keys = keys.reshape(samples, groups, vec).amax(dim=2)
    by_thread = torch.nn.functional.pad(keys, (0, -groups % lanes), value=-float("inf"))
    by_thread = by_thread.reshape(samples, -1, lanes).sort(dim=1, descending=True).values
    if by_thread.shape[1] <= kpl:
        return 0.0, float(k)
    dropped = by_thread[:, kpl:, :].amax(dim=(1, 2))
    listed = by_thread[:, :kpl, :].reshape(samples, -1)
    # (fewer listed groups than k: the kernel's last winners are -inf)
    winners = torch.nn.functional.pad(listed.topk(min(k, listed.shape[1]), dim=1).values,
                                      (0, max(k - listed.shape[1], 0)), value=-float("inf"))
    unsure = (dropped >= winners[:, -1]) & (dropped > -float("inf"))
    certain = torch.where(unsure, (winners > dropped[:, None]).sum(dim=1), k)
    programs = samples - samples % rows
    runs = unsure[:programs].reshape(-1, rows).any(dim=1)
    rounds = k - certain[:programs].reshape(-1, rows).amin(dim=1)
    mean_rounds = rounds[runs].float().mean().item() if runs.any() else float(k)
    return runs.float().mean().item(), mean_rounds


def selection_rows(args: dict, rows_model: str = "normal", samples: int = 1024
                   ) -> torch.Tensor:
    """The rows whose selection ``profile_hints`` simulates for a launch of the kernel with
    ``args``: ``samples`` rows of ``rows_model`` (``ROW_MODELS``) as wide as the classes a
    program selects among (its rows, or its split: then each at a random split of its row)."""
    lanes, vec = args["LANES"], args["VEC"]
    classes = min(args["C"], args["split_chunks"] * lanes * vec or args["C"])
    generator = torch.Generator().manual_seed(0)
    if rows_model == "normal":  # (no split drawn: the same rows as before the other models)
        starts = torch.zeros(samples, dtype=torch.long)
    else:
        starts = torch.randint(0, args["splits"], (samples,), generator=generator) * classes
    return row_logits(rows_model, samples, classes, starts, lanes * vec, generator)


# The kernels (``ldrld``) whose loops stream a row's chunks (``_stream``), and those of them that
# select (``_select``: the exact-selection fallback)
STREAMING = ("_ldrld_rows_kernel", "_ldrld_split_stats_kernel", "_ldrld_split_grads_kernel")
SELECTING = ("_ldrld_rows_kernel", "_ldrld_split_stats_kernel")
# What ``profile_hints`` gives, by name: the names the kernels' tags may use besides the
# launch's arguments and their fields
NAMES = ("full_pairs", "full_odd", "masked_tail_chunks", "all_chunks", "exact_selection",
         "exact_rounds")


def profile_hints(kernel_name: str, args: dict, rows_model: str = "normal") -> dict[str, float]:
    """For ``ldrld profile``: the chunk counts of a streaming kernel's loops, and, where it
    selects, how often the exact selection runs and its rounds there, simulated on 1024 rows
    of ``rows_model`` (``selection_rows``, ``fallback``). ``args``: the launch's arguments
    and the fields of its grouped ones (``k``)."""
    if kernel_name not in STREAMING:
        return {}
    args = {"split_chunks": 0, "splits": 1, **args}  # (whole rows take neither)
    hints = loop_counts(args["C"], args["LANES"], args["VEC"], args["SHIFTED"],
                        args["split_chunks"])
    if kernel_name in SELECTING:
        hints["exact_selection"], hints["exact_rounds"] = fallback(
            selection_rows(args, rows_model), args["k"], args["LANES"], args["VEC"],
            args["KPL"], args["ROWS"])
    return hints
