"""How often the kernels' loops run (``kernels.trips``): the chunk counts, and the
exact-selection fallback's rate simulated on structured rows, against an independent
simulation of the kernel's selection as it streams."""

import re
from pathlib import Path

import pytest
import torch

from ldrld_kernels.kernels import policy, trips


def _streamed_fallback(logits, k, lanes, vec, kpl, rows):
    """The kernel's selection as it streams (``ldrld._insert`` and the k rounds after
    it), chunk by chunk, in whole tensors over rows and threads: the fraction of programs of
    ``rows`` rows in which it is unsure, and the mean of their exact rounds (k less the fewest
    winners above every dropped key of their unsure rows). Independent of
    ``trips.fallback``."""
    samples, classes = logits.shape
    chunk = lanes * vec
    padded = torch.full((samples, -(-classes // chunk) * chunk), -float("inf"))
    padded[:, :classes] = logits
    keys = padded.reshape(samples, -1, lanes, vec).amax(dim=3)  # [rows, chunks, lanes]
    v = torch.full((samples, lanes, kpl), -float("inf"))
    g = torch.full((samples, lanes, kpl), 2**30)
    dropped = torch.full((samples, lanes), -float("inf"))
    for c in range(keys.shape[1]):
        x = keys[:, c, :, None]
        gx = (c * lanes + torch.arange(lanes))[None, :, None]
        dropped = torch.maximum(dropped, torch.minimum(x[:, :, 0], v[:, :, -1]))
        # x goes in before the first smaller key (strictly: ties keep the earlier group)
        above = x > v
        previous = torch.cat([torch.zeros_like(above[:, :, :1]), above[:, :, :-1]], dim=2)
        v = torch.where(previous, v.roll(1, dims=2), torch.where(above, x, v))
        g = torch.where(previous, g.roll(1, dims=2), torch.where(above, gx, g))
    theta = torch.full((samples,), -float("inf"))
    certain = torch.zeros(samples, dtype=torch.long)
    for _ in range(k):  # the best head of the threads' lists, ties to the smaller group
        theta = v[:, :, 0].amax(dim=1)
        group = torch.where(v[:, :, 0] == theta[:, None], g[:, :, 0], 2**30).amin(dim=1)
        pop = (g[:, :, 0] == group[:, None])[:, :, None]
        v = torch.where(pop, torch.cat([v[:, :, 1:], torch.full_like(v[:, :, :1],
                                                                     -float("inf"))], dim=2), v)
        g = torch.where(pop, torch.cat([g[:, :, 1:], torch.full_like(g[:, :, :1], 2**30)],
                                       dim=2), g)
        certain += theta > dropped.amax(dim=1)
    unsure = ((dropped >= theta[:, None]) & (dropped > -float("inf"))).any(dim=1)
    programs = samples - samples % rows
    runs = unsure[:programs].reshape(-1, rows).any(dim=1)
    first = torch.where(unsure, certain, k)[:programs].reshape(-1, rows).amin(dim=1)
    rounds = (k - first[runs]).float().mean().item() if runs.any() else float(k)
    return runs.float().mean().item(), rounds


# launch arguments of whole rows with 64 threads of 2 candidates, and of a wide row's splits
_WHOLE = {"C": 8192, "LANES": 64, "VEC": 8, "KPL": 2, "ROWS": 1, "k": 7, "SHIFTED": False,
          "split_chunks": 0, "splits": 1}
_SPLIT = {**_WHOLE, "C": 40000, "LANES": 32, "KPL": 3, "split_chunks": 8, "splits": 20}


@pytest.mark.parametrize("args", [_WHOLE, _SPLIT, {**_WHOLE, "C": 4000, "LANES": 8, "KPL": 4,
                                                   "ROWS": 4}], ids=["whole", "split", "rows4"])
def test_fallback_rate_is_the_streamed_selection(args):
    rates = {}
    for model in policy.ROW_MODELS:
        logits = trips.selection_rows(args, model)
        hints = trips.profile_hints("_ldrld_split_stats_kernel" if args["split_chunks"]
                                    else "_ldrld_rows_kernel", args, model)
        rates[model] = hints["exact_selection"]
        assert (rates[model], hints["exact_rounds"]) == pytest.approx(_streamed_fallback(
            logits, args["k"], args["LANES"], args["VEC"], args["KPL"], args["ROWS"]))
    # every row of the spaced model has its best groups on one thread; the clustered rows'
    # best classes are consecutive groups, on different threads (and rarer than random ones)
    assert rates["spaced"] == 1.0
    assert rates["clustered"] != rates["normal"]


def test_row_models_put_the_best_classes_where_they_say():
    period = _WHOLE["LANES"] * _WHOLE["VEC"]
    spaced = trips.selection_rows(_WHOLE, "spaced", samples=64)
    top = spaced.topk(7, dim=1).indices
    assert (top % period == top[:, :1] % period).all()  # one class of every chunk
    assert (top.diff(dim=1).abs() % period == 0).all()
    clustered = trips.selection_rows(_WHOLE, "clustered", samples=256)
    normal = trips.selection_rows(_WHOLE, "normal", samples=256)
    assert clustered.topk(7, dim=1).indices.float().median() < 100
    assert normal.topk(7, dim=1).indices.float().median() > 1000
    # the normal rows are those of the profile before the other models (its counts unchanged)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(normal, torch.randn(256, 8192, generator=generator))


def test_spaced_rows_never_fall_back_when_a_thread_keeps_all_its_groups():
    # 4 chunks and 4 candidates: each thread keeps every group it sees
    args = {**_WHOLE, "C": 2048, "LANES": 64, "VEC": 8, "KPL": 4}
    assert trips.profile_hints("_ldrld_rows_kernel", args, "spaced")[
        "exact_selection"] == 0.0


def test_fallback_when_k_exceeds_the_listed_groups():
    # 8 threads x 5 candidates list 40 groups; with k = 48 the kernel's last winners are -inf,
    # so any dropped key makes it unsure (rounds from the 40 certain ones on)
    lanes, vec = 8, 4
    keys = torch.ones(1, 6, lanes)
    keys[:, 5] = 0.0  # each thread's 6th group falls off its list
    logits = keys.reshape(1, -1).repeat_interleave(vec, dim=1)
    assert trips.fallback(logits, 48, lanes, vec, 5, 1) == (1.0, 8.0)


# ---- The names the kernels' tags use ---------------------------------------------------------

_TAG = re.compile(r"#\s*(?:trips|runs):\s*(?P<expr>.+?)\s*$")
_SOURCES = [Path(trips.__file__).with_name(name) for name in ("ldrld.py", "scale.py")]


def _tag_names() -> set[str]:
    names = set()
    for path in _SOURCES:
        for line in path.read_text().splitlines():
            if found := _TAG.search(line):
                names |= set(compile(found["expr"], "<tag>", "eval").co_names)
    return names


def test_tags_name_only_launch_arguments_and_trips_names():
    pytest.importorskip("triton")
    from ldrld_kernels.config import LossNumbers
    from ldrld_kernels.kernels import ldrld, scale

    arguments = {name for module in (ldrld, scale) for kernel in vars(module).values()
                 if hasattr(kernel, "arg_names") for name in kernel.arg_names}
    fields = {*ldrld.Tensors._fields, *ldrld.Strides._fields, *ldrld.Flags._fields,
              *LossNumbers._fields}
    known = arguments | fields | set(trips.NAMES) | {"cdiv", "num_programs", "min", "max"}
    assert _tag_names() <= known, _tag_names() - known


def test_every_trips_name_is_a_tag_and_a_hint():
    # a name declared here but used by no tag, or named by a tag but not given: renamed on
    # one side only
    assert set(trips.NAMES) <= _tag_names()
    whole = {"C": 4096, "LANES": 64, "VEC": 8, "KPL": 2, "ROWS": 1, "k": 7, "SHIFTED": True}
    split = {**whole, "C": 40000, "split_chunks": 8, "splits": 20}
    given = set(trips.profile_hints("_ldrld_rows_kernel", whole)) | set(
        trips.profile_hints("_ldrld_split_stats_kernel", split))
    assert given == set(trips.NAMES)
    assert trips.profile_hints("_scale_kernel", whole) == {}


@pytest.mark.parametrize("classes, lanes, vec, shifted, split_chunks", [
    (4096, 64, 8, False, 0), (50257, 64, 8, True, 0), (1000, 8, 8, True, 0),
    (131072, 256, 8, False, 11), (70001, 512, 4, True, 5)])
def test_loop_counts_cover_every_chunk_once(classes, lanes, vec, shifted, split_chunks):
    counts = trips.loop_counts(classes, lanes, vec, shifted, split_chunks)
    first, last, end = policy.chunk_bounds(classes, lanes, vec, shifted)
    splits = -(-end // split_chunks) if split_chunks else 1
    # per program, averaged over a row's splits: the full chunks (two at a time, and the odd
    # one), the masked tail and a shifted row's masked first chunk make up all of its chunks
    streamed = (2 * counts["full_pairs"] + counts["full_odd"] + counts["masked_tail_chunks"]
                + first / splits)
    assert streamed == pytest.approx(counts["all_chunks"])
    assert counts["all_chunks"] * splits == pytest.approx(end)
    assert 2 * counts["full_pairs"] + counts["full_odd"] == pytest.approx((last - first) / splits)
