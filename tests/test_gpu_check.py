"""``make gpu-check``'s rehearsal: the whole script on the CPU (``--dry-run``), as it will run
on a GPU machine, so that GPU minutes are never spent on a bug that shows here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=2)]


def test_the_dry_run_runs_every_step_and_writes_its_report(digits_checkpoint, tmp_path):
    script = ROOT / "scripts" / "gpu_check.py"
    command = [sys.executable, str(script), "--dry-run", "--out", str(tmp_path)]
    command += ["--checkpoint", str(digits_checkpoint)]  # trained once for the whole session
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    steps = report["steps"]
    assert report["dry_run"] and list(steps) == [
        "environment", "artifacts", "provider_without_torch", "serve", "model_run", "bench",
        "parity", "second_timing", "cuda_tests", "bench_train",
    ]  # fmt: skip
    assert {r["status"] for r in steps.values()} <= {"ok", "skipped"}
    assert len(steps["artifacts"]["models"]) == 6  # every target, fp32 and fp16
    replayed = steps["parity"]["models"]
    assert len(replayed) == 6 and all(r["passed"] and r["ratio"] <= 1 for r in replayed.values())
    # The torch-free process never imported torch, and says why CUDA did not come up.
    torch_free = steps["provider_without_torch"]
    assert torch_free["torch_imported"] is False and "ln2d[serve,gpu]" in torch_free["error"]
    rows = steps["serve"]["rows"]
    assert [row["concurrency"] for row in rows] == [1, 8, 32]
    servers = ("gpu", "cpu", "gpu_unbatched", "gpu_switch")
    assert all(row[s]["non_200"] == 0 for row in rows for s in servers)
    # Each point's own stage times: only batches of one in the unbatched server, and every
    # request of the point counted (its total is there, its queue no longer than its total).
    for row in rows:
        assert row["gpu_unbatched"]["served"]["images_per_run"] == 1
        served = row["gpu"]["served"]
        assert 0 <= served["queue_ms"] < served["total_ms"] and served["images_per_run"] >= 1
    assert [row["batch"] for row in steps["model_run"]["median_ms"]] == [1, 2, 8, 32]
    assert all(
        row["bound"] > 0 and row["plain"] > 0 and row["graphs"] > 0
        for row in steps["model_run"]["median_ms"]
    )
    assert steps["model_run"]["refused"] == {} and steps["serve"]["refused"] == {}
    (calls,) = steps["model_run"]["calls_median_ms"].values()  # the dry run's provider is cpu
    assert set(calls) == {"direct", "pool", "pool_busy_gil", "batch_4", "batch_1_to_8_mixed"}
    assert all(ms > 0 for ms in calls.values())
    # py-spy's profiles (make test runs without it: then they say so)
    profiles = steps["serve"]["profiles"]
    assert set(profiles) == {"gpu_python", "gpu_native", "cpu_python", "cpu_native"}
    for profile in profiles.values():
        if profile.get("error") != "py-spy is not installed":
            assert any("MainThread" in thread for thread in profile["threads"]), profile
            assert (tmp_path / profile["file"]).is_file()
    assert (tmp_path / "gpu-check.md").read_text().startswith("| step | status |")


def test_a_spent_budget_skips_the_steps_and_still_writes_the_report(tmp_path):
    script = ROOT / "scripts" / "gpu_check.py"
    command = [sys.executable, str(script), "--dry-run", "--budget", "5", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = json.loads((tmp_path / "gpu-check.json").read_text())["steps"]
    assert len(steps) == 10
    assert {r["status"] for r in steps.values()} == {"skipped"}
    assert {r["reason"] for r in steps.values()} == {"out of time"}
