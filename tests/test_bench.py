"""`kdprune bench` and the benchmark harness: rows appended to one CSV per benchmark, tagged with what
produced them, written under --out and never into the repository."""
import csv
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A store of 4096 x 64 fp16 (0.5 MB), one round of two batches: the smallest run that still times
# every method of the store benchmark.
TINY_STORE = ["--samples", "4096", "--classes", "64", "--batch", "64", "--rounds", "1", "--repeat", "2",
              "--threads", "1"]


def kdprune(*args, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("KDPRUNE_BENCH_OUT", None)
    return subprocess.run([sys.executable, "-m", "kdprune", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def git_status():
    """What git sees changed where a benchmark could write: its scripts' folder, and new files at the
    top level (the rest of the checkout may be edited by someone else while the test runs)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                         capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if line[3:].startswith("benchmarks/")
            or (line.startswith("??") and "/" not in line[3:])]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")), reason="needs the git checkout")
def test_bench_appends_tagged_rows_under_out_and_leaves_the_checkout_alone(tmp_path):
    before = git_status()
    out = tmp_path / "results"
    for _ in range(2):
        r = kdprune("bench", "store", *TINY_STORE, "--dir", str(tmp_path), "--out", str(out), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    rows = read_csv(out / "store.csv")
    methods = {row["method"] for row in rows}
    assert len(rows) == 2 * len(methods) and "numpy memmap fancy index" in methods
    for row in rows:
        assert row["benchmark"] == "store" and row["date"].endswith("Z")
        assert row["machine"] and "torch=" in row["versions"]
        assert row["command"].startswith("kdprune bench store --samples 4096")
        assert float(row["ms_per_batch"]) > 0
    assert len({row["date"] + row["command"] for row in rows}) >= 1
    assert git_status() == before


def test_bench_defaults_to_runs_bench_in_the_working_directory(tmp_path):
    r = kdprune("bench", "store", *TINY_STORE, "--dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(read_csv(tmp_path / "runs" / "bench" / "store.csv")) >= 5


def test_bench_lists_and_refuses_unknown_names(tmp_path):
    listed = kdprune("bench", "list", cwd=tmp_path)
    assert listed.returncode == 0 and {"loss", "store", "scores"} <= set(listed.stdout.split())
    r = kdprune("bench", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "no benchmark 'nope'" in r.stderr and "store" in r.stderr


def test_harness_widens_the_header_when_a_run_adds_columns(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import harness
    finally:
        sys.path.pop(0)
    path = harness.record("demo", [{"method": "a", "ms": 1.0}], out=tmp_path, size=3)
    harness.record("demo", [{"method": "b", "ms": 2.0, "GB_s": [1, 2]}], out=tmp_path)
    rows = read_csv(path)
    assert [r["method"] for r in rows] == ["a", "b"]
    assert rows[0]["GB_s"] == "" and rows[1]["GB_s"] == "[1, 2]"
    assert rows[0]["config"] == '{"size": 3}' and rows[1]["config"] == "{}"
    assert harness.read("demo", out=tmp_path) == rows
