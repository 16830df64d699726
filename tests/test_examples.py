"""The examples, each on a tiny configuration, and each adapter against the plain call (a
loss that silently computes another objective is the costliest failure for a user)."""

import re

import pytest

from tests.helpers import load_example, run_python


def test_vision_distill_runs_and_logs_the_parts():
    result = run_python("examples/vision_distill.py", "--synthetic", "--epochs", "2",
                        "--per-class", "16", "--size", "16", "--classes", "8", timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"teacher: val accuracy \d\.\d{4}", result.stdout)
    for epoch in (1, 2):
        assert re.search(rf"student epoch {epoch}: loss \S+, ce \S+, local \S+, rntk \S+, "
                         r"val accuracy \d\.\d{4}", result.stdout), result.stdout
    assert "[##############################] 2/2" in result.stderr  # the progress bar


def test_repdistiller_example_trains():
    losses = load_example("repdistiller_ldrld").main(["--steps", "3", "--batch", "8"])
    assert len(losses) == 3 and all(loss > 0 for loss in losses)


def test_mdistiller_example_logs_the_warm_up():
    log = load_example("mdistiller_ldrld").main(["--epochs", "2", "--steps", "3"])
    assert len(log) == 2 and all(set(epoch) == {"loss_ce", "loss_kd"} for epoch in log)
    assert 0 < log[0]["loss_kd"] < log[1]["loss_kd"]  # (WARMUP 20: epoch 2 weighs twice epoch 1)


def test_hf_causal_lm_command():
    pytest.importorskip("transformers", reason="needs transformers (pip install -e '.[examples]')")
    result = run_python("examples/hf_causal_lm_distill.py", "--teacher-steps", "3",
                        "--student-steps", "3", timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"student \(LDRLD\): loss \S+ at the first step", result.stdout)


def test_hf_causal_lm_offline_command(tmp_path):
    pytest.importorskip("transformers", reason="needs transformers (pip install -e '.[examples]')")
    path = tmp_path / "top.pt"
    result = run_python("examples/hf_causal_lm_distill.py", "--teacher-steps", "3",
                        "--student-steps", "3", "--offline", str(path), "--top-k", "8",
                        "--corpus-batches", "2", timeout=300)
    assert result.returncode == 0, result.stderr
    assert path.exists()
    assert re.search(r"saved the teacher's top-8 of \d+ positions", result.stdout)
    assert "student (LDRLD): loss" in result.stdout


def test_digits_distill_reports_every_student():
    pytest.importorskip("sklearn", reason="needs scikit-learn (pip install -e '.[examples]')")
    table = load_example("digits_distill").main(["--seeds", "2", "--epochs", "2"])
    assert set(table) == {"teacher", "CE", "KD", "LDRLD"}
    assert all(len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
               for values in table.values())
    assert min(table["teacher"]) > 0.8
