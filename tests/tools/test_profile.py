"""``ldrld profile``: the instrument's own tests (kernels of known machine code), the compile
of every LDRLD kernel variant for sm_90, the budget check and the command line.

Compiling needs Triton's compiler, which the interpreter of this test session replaces, so
the compiling tests run ``tests/tools/profile_cases.py`` and ``ldrld profile`` in processes of
their own.
"""

import json
import os
import re

import pytest

from ldrld_kernels.tools import profile
from ldrld_kernels.tools.profile import sass
from tests.helpers import ROOT, run_python
from tests.tools import profile_cases


def _compiler_available() -> bool:
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        return False
    return True


# the modules whose kernels carry '# trips:' / '# runs:' tags
KERNEL_SOURCES = [ROOT / "ldrld_kernels" / "kernels" / name for name in ("ldrld.py", "scale.py")]
requires_compiler = pytest.mark.skipif(not _compiler_available(),
                                       reason="needs Triton's CUDA backend")


@pytest.fixture(scope="module")
def cases():
    result = run_python(str(ROOT / "tests" / "tools" / "profile_cases.py"), timeout=900)
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
def test_every_tagged_line_is_a_loop_or_block_of_a_compiled_kernel(cases):
    # a '# trips:' / '# runs:' tag that no compiled kernel's loop or branch carries is a loop
    # that disappeared, moved off its tag, or was renamed: its count would be silently wrong
    used = {re.search(r"(\S+\.py:\d+)", region)[1] for case in cases["ldrld"]
            for region in case["regions"]}
    tagged = {f"{path.name}:{number}" for path in KERNEL_SOURCES
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if sass.TAG.search(line)}
    assert tagged and tagged == used


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
        assert bool({"_ldrld_rows_kernel", "_ldrld_split_stats_kernel"} & {
            name for name, (_, hints) in normal.items() if "exact_selection" in hints}) \
            == case["selects"]


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
    monkeypatch.setitem(profile.BUDGETS, (4096, 4096, "bfloat16", 1, 0),
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
    monkeypatch.setitem(profile.BUDGETS, (4096, 4096, "bfloat16", 1, 0),
                        profile.Budget(instructions_per_element=48, mufu_per_element=1.5))
    (line,) = profile.check_budgets([_call(40)])
    assert "2.00 MUFU operations per element > 1.5" in line


# ---- The exact-selection fallback on structured rows (issue 21, item 6): the report ------


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
    monkeypatch.setitem(profile.BUDGETS, (4096, 4096, "bfloat16", 1, 0),
                        profile.Budget(instructions_per_element=48))
    assert profile.check_budgets(list(by_model[0].values())) == []
