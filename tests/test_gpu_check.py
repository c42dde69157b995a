"""benchmarks/gpu_check.py, the one-run GPU check, in its dry run (tiny sizes, the CPU):
every step runs and passes, so that the script is ready the day a GPU is lent."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_a_failing_step_is_recorded_and_the_run_goes_on(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    args = argparse.Namespace(
        device="cpu", dry_run=True, out=tmp_path / "r.json", work=tmp_path / "w", budget=0.0,
        deadline=60.0, ref_code=None,
    )  # fmt: skip
    check = gpu_check.GPUCheck(args)
    check.step("broken", lambda: {"x": 1 / 0})
    check.step("fine", lambda: {"x": 1})
    check.step("late", lambda: {"x": 2}, optional=True)  # over its budget of 0 s
    report = json.loads((tmp_path / "r.json").read_text())
    broken, fine, late = (report["steps"][k] for k in ("broken", "fine", "late"))
    assert broken["ok"] is False and broken["error"].startswith("ZeroDivisionError")
    assert fine == {"ok": True, "x": 1, "seconds": fine["seconds"]}
    assert late["ok"] is None and "budget" in late["skipped"]
    assert report["summary"] | {"seconds": 0} == {
        "passed": 1, "failed": 1, "skipped": 1, "seconds": 0
    }  # fmt: skip


@pytest.mark.slow
def test_the_dry_run_passes_every_step(tmp_path):
    out = tmp_path / "check.json"
    command = [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--device", "cpu"]
    command += ["--dry-run", "--out", str(out), "--work", str(tmp_path / "work")]
    if os.environ.get("RGFLOW_REF_CODE"):  # the paper's code, where it is at hand
        command += ["--ref-code", os.environ["RGFLOW_REF_CODE"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    report = json.loads(out.read_text())
    steps = report["steps"]
    failed = {name: s.get("error") for name, s in steps.items() if s["ok"] is False}
    assert done.returncode == 0 and not failed, (failed, done.stderr[-3000:])
    expected = {
        "environment", "train_fp32", "train_bf16", "eval", "sample_gpu_vs_cpu",
        "encode_decode", "mix", "inpaint", "receptive_field", "probe",
        "log_density_gpu_vs_cpu", "train_deterministic", "bf16_peak", "bench_64_fp32",
        "bench_64_bf16", "bench_largest_batch", "bench_largest_fp32", "bench_largest_bf16",
    }  # fmt: skip
    assert expected <= {name for name, s in steps.items() if s["ok"] is True}
    assert steps["encode_decode"]["pixel_exact"] and steps["train_deterministic"]["bitwise_equal"]
    assert steps["bench_largest_batch"]["largest"] >= 8
    assert steps["bench_64_fp32"]["fraction_of_bf16_peak"] > 0
    assert steps["train_compiled"]["ok"] is None  # not in a dry run
    assert report["summary"]["failed"] == 0 and report["versions"]["torch"]
