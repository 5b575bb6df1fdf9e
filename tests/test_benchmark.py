"""Smoke tests of the benchmarks: they run end to end on the smallest input and print their tables."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import run_module


@pytest.mark.slow
def test_the_container_benchmark_measures_a_one_image_stack(tmp_path):
    result = run_module("benchmark.run", "--sizes", 1, "--repeats", 1, "--skip-baseline", "--device", "cpu",
                        "--stack-dir", tmp_path / "stacks", "--results-dir", tmp_path / "results", timeout=600)
    assert result.returncode == 0, result.stderr
    (run_folder,) = (tmp_path / "results").glob("run-*")
    results = json.loads((run_folder / "results.json").read_text())
    assert results["ours"]["1"]["runs"][0]["wall_s"] > 0
    assert {option["max_deviation_px"] for option in results["options"]["configs"]} == {0.0}
    assert results["table"] in result.stdout and f"results: {run_folder / 'results.json'}" in result.stdout


def test_the_data_pipeline_benchmark_prints_its_table():
    result = run_module("benchmark.data_pipeline", "--device", "cpu", "--repeats", 1, "--batch-size", 2)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| before") or line.startswith("| now")]
    assert len(rows) == 2 and all(float(row.split("|")[3]) > 0 for row in rows)


def test_the_container_benchmark_fails_at_once_without_the_baselines_packages():
    if importlib.util.find_spec("skimage") is not None:
        pytest.skip("scikit-image is installed here")
    result = run_module("benchmark.run", "--sizes", 1, "--results-dir", "/nonexistent-never-created")
    assert result.returncode == 2 and "pip install -r benchmark/requirements.txt" in result.stderr
