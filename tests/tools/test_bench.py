"""``ldrld bench`` and the GPU check script, on CPU (also on a GPU machine)."""

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch

from ldrld_kernels.tools import bench, cli

ROOT = Path(__file__).resolve().parents[2]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def test_compulsory_bytes():
    # read student and teacher, write the student gradient
    assert bench.compulsory_bytes(256, 1000, torch.float32, torch.float32) == 256 * 1000 * 12
    assert bench.compulsory_bytes(256, 1000, torch.bfloat16, torch.float32) == 256 * 1000 * 8
    assert bench.compulsory_bytes(8192, 32000, torch.bfloat16, torch.bfloat16) == 1_572_864_000
    # a sparse teacher: its ids (int64) and log-probabilities instead of the teacher's logits
    assert bench.compulsory_bytes(8192, 32000, torch.bfloat16, torch.float32, 64) == \
        8192 * (32000 * 4 + 64 * 12)


def test_quick_bench_table_and_files(tmp_path, capsys):
    code = cli.main(["bench", "--quick", "--device", "cpu", "--out", str(tmp_path), "--name",
                     "run"])
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.out.splitlines()
    assert lines[0].split() == ["shape", "rows", "x", "C", "dtype", "backend", "teacher", "MB",
                                "ms", "GB/s", "%", "copy", "x", "ref", "x", "compile", "x",
                                "logits", "peak", "MiB"]
    rows = [line for line in lines[2:] if line.startswith(("imagenet", "llm"))]
    # 2 shapes x 2 dtypes x (torch, torch on the top-64, reference)
    assert len(rows) == 12
    assert "[12/12]" in captured.err and "device-to-device copy" in captured.err

    report = json.loads((tmp_path / "run.json").read_text())
    assert set(report) == {"device", "card", "date", "versions", "copy_gbps", "quick",
                           "results"}
    assert report["quick"] is True and report["copy_gbps"] > 0
    assert {"torch", "triton", "python", "ldrld_kernels"} <= set(report["versions"])
    first = report["results"][0]
    assert set(first) == {"shape", "rows", "classes", "k", "dtype", "backend", "teacher",
                          "status", "median_ms", "gbps", "copy_fraction", "speedup_vs_reference",
                          "speedup_vs_compile", "speedup_vs_logits", "compulsory_bytes",
                          "peak_memory_bytes"}
    torch_rows = [r for r in report["results"] if r["backend"] == "torch"]
    assert [r["teacher"] for r in torch_rows] == ["logits", "top-64"] * 4
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in torch_rows)
    for r in torch_rows:
        listed = 64 if r["teacher"] == "top-64" else 0
        nbytes = bench.compulsory_bytes(r["rows"], r["classes"], bench.DTYPES[r["dtype"]],
                                        torch.float32 if listed else bench.DTYPES[r["dtype"]],
                                        listed)
        assert r["compulsory_bytes"] == nbytes
        assert r["gbps"] == pytest.approx(nbytes / r["median_ms"] / 1e6)
        # (a ratio of times measured in the same run; its size depends on the machine's load)
        (reference,) = [x for x in report["results"] if x["backend"] == "reference"
                        and (x["shape"], x["dtype"]) == (r["shape"], r["dtype"])]
        assert r["speedup_vs_reference"] == pytest.approx(
            reference["median_ms"] / r["median_ms"])
        # the sparse teacher's row against the same backend on the logits, in the same run
        assert (r["speedup_vs_logits"] is None) == (not listed)
        assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] > 0
    with (tmp_path / "run.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 12
    assert (tmp_path / "run.md").read_text().count("\n| ") == 13


def test_time_limit_skips_the_rest(capsys):
    assert cli.main(["bench", "--device", "cpu", "--shapes", "imagenet", "--dtypes", "float32",
                     "--backends", "torch", "--time-limit", "0"]) == 0
    assert "skipped: time limit" in capsys.readouterr().out


def test_unknown_shape_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--shapes", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "llm-256k-64rows" in err
    with pytest.raises(SystemExit):
        cli.main(["bench", "--backends", "cuda"])


def test_reference_is_skipped_on_large_shapes():
    assert bench.skip_reason("reference", bench.Shape("big", 4096, 21843),
                             torch.device("cpu")).startswith("skipped")
    assert bench.skip_reason("torch", bench.Shape("small", 4, 100), torch.device("cpu")) is None


def test_gpu_check_script_parses_and_lists_its_steps():
    assert subprocess.run(["bash", "-n", str(GPU_CHECK)], check=False).returncode == 0
    result = subprocess.run(["bash", str(GPU_CHECK), "--dry-run"], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines()
             if line.strip()[:2] in {"1.", "2.", "3.", "4.", "5."}]
    assert len(steps) == 5
    assert "pytest" in steps[1] and "bench" in steps[2] and "--fused-linear" in steps[3]
    assert "ncu" in steps[4]
    assert "{log,json,csv,md,png,ncu.csv}" in result.stdout


def test_gpu_check_rejects_unknown_arguments():
    result = subprocess.run(["bash", str(GPU_CHECK), "--fast"], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 2 and "usage" in result.stderr


def test_calibration_reads_ncu_csv(tmp_path):
    # ncu's details page: its own log lines, then one row per (launch, metric)
    from benchmarks import calibrate

    path = tmp_path / "ncu.csv"
    header = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream",'
              '"Block Size","Grid Size","Device","CC","Section Name","Metric Name",'
              '"Metric Unit","Metric Value"')
    rows = [f'"{launch}","1","python3","h","{name}","1","7","(256, 1, 1)","(4096, 1, 1)",'
            f'"0","9.0","Command line profiler metrics","{metric}","inst","{value}"'
            for launch, name, metric, value in (
                (0, "_ldrld_rows_kernel", "smsp__inst_executed.sum", "1,234,567"),
                (0, "_ldrld_rows_kernel", "dram__bytes_read.sum", "100"),
                (1, "_scale_kernel", "smsp__inst_executed.sum", "42"))]
    path.write_text("==PROF== Connected to process 1\n" + "\n".join([header, *rows]) + "\n")
    launches = calibrate._launches(str(path))
    assert [launch["kernel"] for launch in launches] == ["_ldrld_rows_kernel", "_scale_kernel"]
    assert launches[0]["smsp__inst_executed.sum"] == "1234567"
    assert launches[0]["dram__bytes_read.sum"] == "100"
