"""Each benchmark still runs (smoke versions: tiny model, seconds) and writes its results;
the figures themselves are not asserted against goals here (benchmarks are not timed tests)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_STEPS, SharedRun
from tests.e2e import REPO


def bench(name: str, out: Path, *extra: str, timeout: float = 600) -> dict:
    res = subprocess.run([sys.executable, "-m", "cli.main", "bench", name, "--smoke", "--out", str(out), *extra],
                         cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = sorted(out.glob("*.json"))
    assert files, res.stdout[-2000:]
    return json.loads(files[-1].read_text())


def test_packing_smoke(tmp_path: Path) -> None:
    r = bench("packing", tmp_path)
    assert {row["mode"] for row in r["rows"]} == {"padded", "packed"} and r["speedup"] > 0
    assert all(row["peak_rss_mb"] > 0 for row in r["rows"])


def test_learner_smoke(tmp_path: Path) -> None:
    r = bench("learner", tmp_path)
    assert [row["variant"] for row in r["rows"]] == ["mp"]
    assert all(row["step_s"] > 0 and 0 < row["mfu"] < 1.5 and row["tflop"] > 0 for row in r["rows"])


def test_transport_smoke(tmp_path: Path) -> None:
    r = bench("transport", tmp_path)
    assert r["ratio"] > 0 and all(row["MB_per_s"] > 0 for row in r["rows"])


@pytest.mark.slow
def test_memory_report_of_a_run(tiny_run: SharedRun, tmp_path: Path) -> None:
    """bench memory's table from a real run's metrics (the shared tiny run; the bench starts its own
    through the same launch helper)."""
    from benchmarks.bench_memory import report

    assert tiny_run.returncode == 0
    report(tiny_run.run_dir, 2, 1, tmp_path, REPO / "configs" / "tiny_cpu.toml")
    r = json.loads((tmp_path / "memory.json").read_text())
    assert r["rows"][0]["peak_rss_mb"] > 0 and "growth_max" in r and r["steps"] == TINY_STEPS


@pytest.mark.slow
@pytest.mark.extended  # its runs: the launch helper every end-to-end test uses; its report: the test above
def test_memory_smoke(tmp_path: Path) -> None:
    r = bench("memory", tmp_path)
    assert r["rows"][0]["peak_rss_mb"] > 0 and "growth_max" in r


@pytest.mark.slow
def test_async_report_of_two_runs(sync_run: SharedRun, tiny_run: SharedRun, tmp_path: Path) -> None:
    """bench async's table and curves from a synchronous and an asynchronous run (the shared
    sync and tiny runs; the bench starts its own two through the same launch helper)."""
    from benchmarks.bench_async import report
    from benchmarks.run_control import read_run

    assert sync_run.returncode == 0 and tiny_run.returncode == 0
    report({"sync": read_run(sync_run.run_dir), "async": read_run(tiny_run.run_dir)}, tmp_path, "smoke")
    r = json.loads((tmp_path / "async_vs_sync.json").read_text())
    assert [row["mode"] for row in r["rows"]] == ["sync", "async"] and r["speedup"] > 0
    assert all(row["samples_per_s"] > 0 and 0 < row["generator_busy"] <= 1.0 for row in r["rows"])
    assert (tmp_path / "async_vs_sync.png").is_file()


@pytest.mark.slow
@pytest.mark.extended  # as test_memory_smoke: the report is tested above on two real runs
def test_async_smoke(tmp_path: Path) -> None:
    r = bench("async", tmp_path, "--seconds", "3")
    assert [row["mode"] for row in r["rows"]] == ["sync", "async"]
    assert all(row["samples_per_s"] > 0 and 0 < row["generator_busy"] <= 1.0 for row in r["rows"])
    assert (tmp_path / "async_vs_sync.png").is_file()


def test_time_to_accuracy_compares_at_the_best_accuracy_both_reach() -> None:
    """The target when both reach it, else the lower of the two best accuracies; validations past
    the cap do not count; the ratio is TRL's minutes over asyncrl's."""
    from benchmarks.bench_time_to_accuracy import compare

    a = [{"minutes": 1.0, "accuracy": 0.0}, {"minutes": 3.0, "accuracy": 0.72}, {"minutes": 5.0, "accuracy": 0.8}]
    t = [{"minutes": 2.0, "accuracy": 0.1}, {"minutes": 9.0, "accuracy": 0.5}, {"minutes": 70.0, "accuracy": 0.9}]
    r = compare({"asyncrl": a, "trl": t}, target=0.7, cap_minutes=60)
    assert r["threshold"] == 0.5 and not r["target_reached_by_both"]
    assert r["minutes_to_threshold"] == {"asyncrl": 3.0, "trl": 9.0} and r["ratio_trl_over_asyncrl"] == 3.0
    r = compare({"asyncrl": a, "trl": t}, target=0.7, cap_minutes=80)
    assert r["threshold"] == 0.7 and r["target_reached_by_both"] and r["minutes_to_threshold"]["trl"] == 70.0


@pytest.mark.slow
@pytest.mark.extended  # two trainers end to end (~2-3 min); needs the `bench` extra (trl)
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="pip install -e '.[bench]' (trl)")
def test_time_to_accuracy_smoke(tmp_path: Path) -> None:
    r = bench("time-to-accuracy", tmp_path, timeout=900)
    assert {row["trainer"].split()[0] for row in r["rows"]} == {"TRL", "asyncrl"}
    assert all(len(r["curves"][k]) == 4 and r["curves"][k][0]["step"] == 0 for k in ("trl", "asyncrl"))
    assert r["ratio_trl_over_asyncrl"] > 0 and r["trl_batches"]["steps_per_generation"] == 1
    assert (tmp_path / "time_to_accuracy.png").is_file()


def test_unknown_suite_exits_2(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "cli.main", "bench", "nope"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "unknown suite 'nope'" in res.stderr
