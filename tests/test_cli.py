"""``ldrld check``: the table, the exit code, the argument handling."""

import subprocess
import sys

import pytest

from ldrld_kernels import cli
from ldrld_kernels.check import Comparison
from tests.helpers import requires_triton


def test_check_passes_and_prints_a_table(capsys):
    code = cli.main(["check", "--backend", "torch", "--seed", "3", "--shape", "2x37x3",
                     "3x300x7"])
    out = capsys.readouterr().out
    assert code == 0
    assert "seed 3" in out and "all passed" in out
    rows = [line for line in out.splitlines() if line.startswith("torch ")]
    assert len(rows) == 6 and all(line.endswith("PASS") for line in rows)
    assert "3 x 300, 7" in out


@requires_triton
def test_check_runs_the_triton_backend(capsys):
    assert cli.main(["check", "--backend", "all", "--seed", "4", "--shape", "2x50x4",
                     "--dtype", "float32", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("triton ")]) == 2
    assert "FAIL" not in out


def test_check_exits_1_on_failure(monkeypatch, capsys):
    monkeypatch.setattr(cli, "compare_with_reference",
                        lambda *a, **kw: Comparison(1.0, 0.0, 0.0, passed=False))
    assert cli.main(["check", "--backend", "torch", "--shape", "2x37x3",
                     "--dtype", "float32"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bad_shape_argument(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--shape", "2x37"])
    assert exc.value.code == 2
    assert "ROWSxCxK" in capsys.readouterr().err


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "ldrld_kernels", "check", "--backend", "torch", "--shape",
         "2x20x3", "--dtype", "float64"], capture_output=True, text=True, timeout=120,
        check=False)
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout
