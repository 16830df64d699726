"""The ``ldrld`` command: ``check``'s table and exit code, the argument handling of both
commands, and what a clean run of each prints."""

import re
import subprocess

import pytest
import torch

from ldrld_kernels.tools import cli
from ldrld_kernels.tools.check import Comparison
from tests.helpers import requires_triton, run_python


def test_check_passes_and_prints_a_table(capsys):
    code = cli.main(["check", "--backend", "torch", "--seed", "3", "--shape", "2x37x3",
                     "3x300x7"])
    out = capsys.readouterr().out
    assert code == 0
    assert "seed 3" in out and "all passed" in out
    rows = [line for line in out.splitlines() if line.startswith("torch ")]
    # each shape and dtype against the teacher's logits and against its top-4k
    assert len(rows) == 12 and all(line.endswith("PASS") for line in rows)
    assert "3 x 300, 7 (logits)" in out and "3 x 300, 7 (top-28)" in out
    assert "2 x 37, 3 (top-12)" in out


@requires_triton
def test_check_runs_the_triton_backend(capsys):
    assert cli.main(["check", "--backend", "all", "--seed", "4", "--shape", "2x50x4",
                     "--dtype", "float32", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("triton ")]) == 4
    assert "FAIL" not in out


def test_check_exits_1_on_failure(monkeypatch, capsys):
    monkeypatch.setattr(cli, "compare_with_reference",
                        lambda *a, **kw: Comparison(1.0, 0.0, 0.0, passed=False))
    assert cli.main(["check", "--backend", "torch", "--shape", "2x37x3",
                     "--dtype", "float32"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("shape", ["2x37", "4x10x10", "4x10x1", "0x10x3", "2x100x65"])
def test_bad_shape_is_an_argument_error(shape, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--shape", shape])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--shape" in err and shape in err and "Traceback" not in err


def test_check_takes_float16(capsys):
    assert cli.main(["check", "--backend", "torch", "--seed", "5", "--shape", "2x50x4",
                     "--dtype", "float16"]) == 0
    assert re.search(r"^torch +float16 .*PASS$", capsys.readouterr().out, re.MULTILINE)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("command", ["check", "bench"])
def test_unavailable_device_is_one_line(command, capsys):
    assert cli.main([command, "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    expected = (f"ldrld {command}: error: --device cuda: this PyTorch ({torch.__version__}) "
                "has no usable cuda device")
    assert captured.err.splitlines() == [expected]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    """``ldrld`` as a user runs it."""
    return run_python("-m", "ldrld_kernels", *args)


def test_clean_check_prints_nothing_on_stderr():
    result = _run_cli("check", "--seed", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert result.stdout.rstrip().endswith("all passed")


def test_clean_bench_prints_only_progress_on_stderr(tmp_path):
    result = _run_cli("bench", "--quick", "--device", "cpu", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    progress = re.compile(r"^(.+: device-to-device copy [0-9.]+ GB/s"
                          r"|\[\d+/\d+\] .+ \(\d+ x \d+\) \w+ [\w.]+ (logits|top-\d+): .+"
                          r"|matplotlib is not installed .+: no plot)$")
    unexpected = [line for line in result.stderr.splitlines() if not progress.match(line)]
    assert unexpected == []
    assert "[12/12]" in result.stderr
    # the default file name carries the time of day: a rerun never overwrites a result
    (json_file,) = tmp_path.glob("*.json")
    assert re.fullmatch(r".+-\d{4}-\d{2}-\d{2}-\d{6}\.json", json_file.name)


def test_module_entry_point():
    result = _run_cli("check", "--backend", "torch", "--shape", "2x20x3", "--dtype", "float64")
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout


def test_bench_fused_linear_prints_both_variants(capsys):
    assert cli.main(["bench", "--fused-linear", "300x16x2000", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^materialized +300 +16 +2000 +float32", out, re.MULTILINE)
    assert re.search(r"^fused-linear +300 +16 +2000 +float32", out, re.MULTILINE)


@pytest.mark.parametrize("shape", ["300x16", "0x16x2000", "4x16x7", "axbxc"])
def test_bench_fused_linear_rejects_bad_shapes(shape, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--fused-linear", shape])
    assert "ROWSxHxC" in capsys.readouterr().err or "needs ROWS" in capsys.readouterr().err
