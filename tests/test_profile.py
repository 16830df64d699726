"""``ldrld profile``: the instrument's own tests (kernels of known machine code), the compile
of every LDRLD kernel variant for sm_90, the budget check and the command line.

Compiling needs Triton's compiler, which the interpreter of this test session replaces, so
the compiling tests run ``tests/profile_cases.py`` and ``ldrld profile`` in processes of
their own.
"""

import json
import os

import pytest
import torch

from ldrld_kernels.kernels import trips
from ldrld_kernels.tools import profile
from tests import profile_cases
from tests.helpers import ROOT, run_python


def _compiler_available() -> bool:
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        return False
    return True


requires_compiler = pytest.mark.skipif(not _compiler_available(),
                                       reason="needs Triton's CUDA backend")


@pytest.fixture(scope="module")
def cases():
    result = run_python(str(ROOT / "tests" / "profile_cases.py"), timeout=900)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@requires_compiler
def test_copy_kernel_is_vector_loads_and_stores(cases):
    copy = cases["instrument"]["copy"]
    assert copy["load_bits"] == [128] and copy["store_bits"] == [128]
    assert copy["load_128_fraction"] == 1.0 and copy["store_128_fraction"] == 1.0
    assert copy["spill_store_bytes"] == copy["spill_load_bytes"] == 0
    # 1024 floats per program of 128 threads: two 128-bit loads and stores per thread and
    # a handful of address instructions, for 8 elements
    assert 0.5 < copy["instructions_per_element"] < 4
    assert copy["resident_warps"] == 64 and copy["mufu_per_element"] == 0


@requires_compiler
def test_loop_count_scales_with_its_trip_count(cases):
    ten, fifty, hundred = (cases["instrument"][f"loop{n}"]["instructions_per_element"]
                           for n in (10, 50, 100))
    # one FFMA per trip (the compiler unrolls the loop) on top of a fixed part
    per_trip = (hundred - fifty) / 50
    assert 1 <= per_trip <= 3
    assert (fifty - ten) / 40 == pytest.approx(per_trip, rel=0.2)
    assert ten > 10 * per_trip
    loops = cases["instrument"]["loop100"]["loops"]
    assert any("x 25" in loop or "x 100" in loop for loop in loops), loops


@requires_compiler
def test_untagged_loop_is_an_error(cases):
    assert "0 '# trips:' tagged lines" in cases["instrument"]["untagged"]


@requires_compiler
def test_counts_do_not_depend_on_the_path_in_the_cache(cases):
    # issue 21: the same kernel source at a second path compiles to the first path's cached
    # binary, whose line information names the first path; the tags are the kernel's own
    moved = cases["instrument"]["moved"]
    assert moved["cached_from_first"]  # the scenario happened: both binaries came from cache
    assert isinstance(moved["first"], float), moved["first"]
    assert moved["moved"] == moved["first"]  # the first checkout gone
    assert moved["changed"] == moved["first"]  # another version of the file at its path


@requires_compiler
def test_spilling_kernel_reports_spills(cases):
    spill = cases["instrument"]["spill"]
    assert spill["spill_store_bytes"] > 1000 and spill["spill_load_bytes"] > 1000
    assert spill["stack_bytes"] > 0


@requires_compiler
def test_every_ldrld_variant_compiles(cases):
    # (the Triton compiler accepts code that the interpreter runs, and the other way round)
    by_case = {case["case"]: case["kernels"] for case in cases["ldrld"]}
    compiled = {name for names in by_case.values() for name in names}
    assert len(by_case) == len(profile_cases.LDRLD_CASES)
    # whole rows in one launch; wide rows in two, statistics then gradients
    assert {"_ldrld_rows_kernel", "_ldrld_split_stats_kernel", "_ldrld_split_grads_kernel",
            "_scale_kernel"} <= compiled


@requires_compiler
def test_rows_models_change_the_fallback_only(cases):
    for case in cases["ldrld"]:
        if "rows_models" not in case:
            continue
        normal, clustered, spaced = (case["rows_models"][m] for m in profile.ROW_MODELS)
        for name, (count, hints) in normal.items():
            if "exact_selection" not in hints:  # no selection: the same counts on any rows
                assert clustered[name][0] == spaced[name][0] == count, (case["case"], name)
                continue
            # the tags used the simulated rate; on spaced rows every program falls back
            assert hints["exact_selection"] < 0.05 and spaced[name][1]["exact_selection"] == 1
            assert spaced[name][0] > count + 5, (case["case"], name)  # (its exact rounds)
            assert clustered[name][0] <= spaced[name][0]
        assert {"_ldrld_rows_kernel", "_ldrld_split_stats_kernel"} & {
            name for name, (_, hints) in normal.items() if "exact_selection" in hints}


@requires_compiler
def test_profile_command(tmp_path):
    path = tmp_path / "profile.json"
    result = run_python("-m", "ldrld_kernels", "profile", "--classes", "1000", "--rows", "64",
                  "--dtype", "bfloat16", "--json", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ldrld profile: Triton ")
    assert lines[1].split()[:4] == ["rows", "C", "dtype", "kernel"]
    (call,) = json.loads(path.read_text())
    assert call["classes"] == 1000 and call["rows"] == 64 and call["bytes_per_element"] == 6
    kernel = call["kernels"][0]
    assert kernel["name"] == "_ldrld_rows_kernel" and kernel["registers"] > 0
    assert call["instructions_per_element"] == pytest.approx(
        sum(k["instructions_per_element"] for k in call["kernels"]))
    assert 0 < call["ceiling_h200"] <= call["ceiling_h100"] <= 100


def test_profile_refuses_the_interpreter():
    assert os.environ.get("TRITON_INTERPRET") == "1" or not _compiler_available()
    with pytest.raises(RuntimeError, match="without TRITON_INTERPRET=1"), \
            profile.compile_only():
        pass


def test_model_numbers():
    # the budgets of the module docstring: ~46 / 93 on an H200, ~67 / 134 on an H100
    assert profile.instruction_budget(6, "H200") == pytest.approx(46.7, abs=0.1)
    assert profile.instruction_budget(12, "H200") == pytest.approx(93.4, abs=0.1)
    assert profile.instruction_budget(6, "H100") == pytest.approx(66.9, abs=0.1)
    # occupancy: registers, warps and shared memory each limit the resident CTAs
    assert profile.resident_ctas(32, 4, 0) == 16            # 64 warps / 4
    assert profile.resident_ctas(128, 8, 0) == 2             # 65536 / (128 x 32) / 8
    assert profile.resident_ctas(255, 8, 0) == 1
    assert profile.resident_ctas(32, 4, 100 * 1024) == 2     # 228 KiB / (100 + 1) KiB


def _call(instructions: float, spills: int = 0, warps: int = 32, kernels: int = 1):
    kernel = profile.KernelProfile(
        name="_kernel", grid=[4096], launches=1, num_warps=8, registers=64,
        spill_store_bytes=spills, spill_load_bytes=0, stack_bytes=spills, shared_bytes=0,
        resident_ctas=warps // 8, resident_warps=warps,
        instructions_per_element=instructions / kernels, barriers_per_row=1.0,
        mufu_per_element=2.0, load_bits=[128], store_bits=[128], load_128_fraction=1.0,
        store_128_fraction=1.0)
    return profile.CallProfile(4096, 4096, "bfloat16", 7, True, False, 6, [kernel] * kernels)


def test_check_names_each_broken_budget(monkeypatch):
    monkeypatch.setitem(profile.BUDGETS, (4096, 4096, "bfloat16", 1),
                        profile.Budget(instructions_per_element=48))
    assert profile.check_budgets([_call(47.9)]) == []
    assert profile.check_budgets([_call(48.1)]) == [
        "4096 x 4096 bfloat16: 48.1 instructions per element > 48"]
    (line,) = profile.check_budgets([_call(40, spills=8)])
    assert "_kernel spills 8 bytes" in line
    (line,) = profile.check_budgets([_call(40, warps=8)])
    assert "8 warps per SM resident < 16" in line
    (line,) = profile.check_budgets([_call(40, kernels=3)])
    assert "3 kernels > 1" in line
    monkeypatch.setitem(profile.BUDGETS, (4096, 4096, "bfloat16", 1),
                        profile.Budget(instructions_per_element=48, mufu_per_element=1.5))
    (line,) = profile.check_budgets([_call(40)])
    assert "2.00 MUFU operations per element > 1.5" in line


# ---- The exact-selection fallback on structured rows (issue 21, item 6) ---------------------


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
    for model in profile.ROW_MODELS:
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


def test_fallback_table_and_budgets_on_structured_rows(monkeypatch):
    def call(model, instructions, rate):
        profile_ = _call(instructions)
        profile_.kernels[0].hints = {"exact_selection": rate}
        profile_.rows_model = model
        return profile_

    by_model = [{"normal": call("normal", 45, 0.001), "clustered": call("clustered", 45, 0.0),
                 "spaced": call("spaced", 99, 1.0)}]
    (row,) = profile.fallback_rows(by_model)
    assert row == ["4096", "4096", "bfloat16", "0.10%", "0.00%", "100.00%", "45.0", "45.0",
                   "99.0", "2.20"]
    # the budgets hold the normal rows only
    monkeypatch.setitem(profile.BUDGETS, (4096, 4096, "bfloat16", 1),
                        profile.Budget(instructions_per_element=48))
    assert profile.check_budgets(list(by_model[0].values())) == []


def test_fallback_when_k_exceeds_the_listed_groups():
    # 8 threads x 5 candidates list 40 groups; with k = 48 the kernel's last winners are -inf,
    # so any dropped key makes it unsure (rounds from the 40 certain ones on)
    lanes, vec = 8, 4
    keys = torch.ones(1, 6, lanes)
    keys[:, 5] = 0.0  # each thread's 6th group falls off its list
    logits = keys.reshape(1, -1).repeat_interleave(vec, dim=1)
    assert trips.fallback(logits, 48, lanes, vec, 5, 1) == (1.0, 8.0)
