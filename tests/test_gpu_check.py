"""benchmarks/gpu_check.py: its CPU path end to end, and the arithmetic, records and summary of its GPU
path on fake timings (the GPU path itself runs only where there is a GPU: `make gpu-check`)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_loss  # noqa: E402
import gpu_check  # noqa: E402


def test_without_cuda_it_says_so_checks_imports_and_exits_0(tmp_path):
    out = tmp_path / "gc" / "gpu_check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--out", str(out),
                           "--wheels", str(tmp_path / "no-wheels"), "--work", str(tmp_path / "work")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no CUDA device" in proc.stdout
    doc = json.loads(out.read_text())
    assert gpu_check.schema_problems(doc) == []
    assert doc["cuda"] is False and doc["stages"] == {} and doc["ok"] is True
    for name in ("kdprune", "kdprune.kernels.kd_loss", "bench_loss", "resnet50", "kdprune.fit"):
        assert doc["imports"][name] == "ok", doc["imports"]
    assert doc["imports"]["liger_kernel"].startswith("absent")
    assert doc["liger"]["status"] == "no wheel" and "pip download" in doc["liger"]["note"]
    assert (out.parent / "summary.md").read_text() in proc.stdout


def test_carried_wheels_are_unpacked_liger_first_on_the_path_fallbacks_last(tmp_path, monkeypatch):
    import zipfile

    wheels, work = tmp_path / "wheels", tmp_path / "work"
    wheels.mkdir()
    for name, module in (("liger_kernel-9.9-py3-none-any.whl", "fake_liger_mod"),
                         ("tqdm-0.1-py3-none-any.whl", "fake_tqdm_mod")):
        with zipfile.ZipFile(wheels / name, "w") as zf:
            zf.writestr(f"{module}.py", f"WHO = {module!r}\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    info = gpu_check.unpack_wheels(str(wheels), str(work))
    assert info["status"] == "unpacked" and info["wheel"] == "liger_kernel-9.9-py3-none-any.whl"
    assert info["fallback_wheels"] == ["tqdm-0.1-py3-none-any.whl"]
    assert gpu_check.unpack_wheels(str(wheels), str(work)) == info  # a second run unpacks nothing new
    gpu_check.make_importable(str(work))
    assert sys.path.index(str(work / "liger")) < sys.path.index(gpu_check.REPO)
    assert sys.path[-1] == str(work / "fallback")
    assert (work / "liger" / "fake_liger_mod.py").exists() and (work / "fallback" / "fake_tqdm_mod.py").exists()
    assert gpu_check.unpack_wheels(str(tmp_path / "none"), str(work))["status"] == "no wheel"


def test_peak_bandwidth_from_the_table_an_override_or_the_device():
    class Props:
        memory_clock_rate = 2_619_000  # kHz
        memory_bus_width = 5120

    assert bench_loss.peak_bandwidth("NVIDIA H200") == (4.8e12, "table")
    assert bench_loss.peak_bandwidth("NVIDIA H100 80GB HBM3") == (3.35e12, "table")
    assert bench_loss.peak_bandwidth("NVIDIA H100 NVL") == (3.9e12, "table")  # not the generic H100
    assert bench_loss.peak_bandwidth("NVIDIA H200", override_tbs=4.0) == (4.0e12, "--peak-tbs")
    bw, source = bench_loss.peak_bandwidth("Some Future GPU", props=Props())
    assert source == "device properties" and bw == pytest.approx(2 * 2.619e9 * 5120 / 8)
    assert bench_loss.peak_bandwidth("Some Future GPU") == (None, "unknown")
    with pytest.raises(ValueError, match="peak-tbs"):
        bench_loss.peak_bandwidth("NVIDIA H200", override_tbs=0.0)


def test_minimum_bytes_and_bandwidth():
    # bf16 student and teacher: read S (2 B), read T (2 B), write dS (2 B) per logit
    assert bench_loss.min_bytes(8192, 32000, 2, 2) == 8192 * 32000 * 6
    assert bench_loss.min_bytes(4, 10, 4, 2) == 4 * 10 * 10
    gbs, frac = bench_loss.bandwidth(3e9, 1.0, 4e12)  # 3 GB in 1 ms = 3 TB/s
    assert gbs == pytest.approx(3000.0) and frac == pytest.approx(0.75)
    assert bench_loss.bandwidth(3e9, 1.0, None)[1] is None


def fake_loss_rows(peak=4.8e12):
    rows = []
    for C, ours_ms in ((32000, 0.40), (1000, 0.05)):
        times = {"ours (Triton)": {"median_ms": ours_ms, "min_ms": ours_ms, "runs": 70},
                 "eager composite": {"median_ms": 10 * ours_ms, "min_ms": 9 * ours_ms, "runs": 70},
                 "torch.compile composite": {"median_ms": 2 * ours_ms, "min_ms": 2 * ours_ms, "runs": 70},
                 "Liger CE + KL": "OutOfMemoryError: CUDA out of memory" if C == 1000 else
                 {"median_ms": 3 * ours_ms, "min_ms": 3 * ours_ms, "runs": 70}}
        rows += bench_loss.config_rows(8192, C, "bfloat16", times, {"median_ms": 0.8 * ours_ms}, "NVIDIA H200", peak)
    return rows


def test_config_rows_on_fake_timings():
    rows = fake_loss_rows()
    ours = rows[0]
    nbytes = 8192 * 32000 * 6
    assert ours["impl"] == "ours (Triton)" and ours["min bytes"] == nbytes
    assert ours["GB/s over min bytes"] == pytest.approx(nbytes / 0.4e-3 / 1e9)
    assert ours["fraction of peak"] == pytest.approx(nbytes / 0.4e-3 / 4.8e12)
    assert ours["fwd fraction of peak"] == pytest.approx(nbytes / 0.32e-3 / 4.8e12)
    assert ours["speedup vs eager"] == pytest.approx(10)
    assert ours["speedup vs compile"] == pytest.approx(2)
    assert ours["speedup vs Liger"] == pytest.approx(3)
    small = [r for r in rows if r["C"] == 1000]
    assert "speedup vs Liger" not in small[0]  # Liger failed there: no ratio against it
    assert small[-1]["impl"] == "Liger CE + KL" and small[-1]["error"].startswith("OutOfMemoryError")


def test_the_gpu_section_runs_end_to_end_at_small_sizes_on_the_cpu():
    # the code the GPU runs, on the CPU (wall clock for CUDA events, the C++ kernel for Triton), so a
    # slip in it shows here rather than in a GPU machine's few minutes
    args = bench_loss.parse_args(["--skip-cpu", "--batch", "16", "--classes", "50,300", "--dtypes", "float32,bfloat16",
                                  "--repeat", "2", "--warmup", "1", "--impls", "ours,eager", "--peak-tbs", "0.05"])
    seen = []
    rows = bench_loss.gpu_section(args, on_rows=lambda r: seen.append(len(r)), device="cpu")
    assert seen == [2, 4, 6, 8]  # all rows so far, after every (C, dtype)
    assert {(r["C"], r["dtype"], r["impl"]) for r in rows} == {
        (C, dt, impl) for C in (50, 300) for dt in ("float32", "bfloat16") for impl in ("ours (Triton)", "eager composite")}
    for r in rows:
        assert r["fwd+bwd ms (median)"] > 0 and r["fraction of peak"] == pytest.approx(
            r["GB/s over min bytes"] * 1e9 / 0.05e12)
        if r["impl"].startswith("ours"):
            assert r["oracle"] == "ok" and r["fwd ms"] > 0 and r["speedup vs eager"] > 0


def fake_document(tests_status="ok"):
    def record(status, result, seconds=12.0):
        return {"status": status, "returncode": 0 if status == "ok" else 1, "seconds": seconds, "limit_s": 100,
                "log": "x.log", "log_tail": "", "result": result}

    step = {"data_ms": 0.1, "teacher_ms": 0.5, "forward_ms": 40.0, "loss_ms": 0.3, "backward_step_ms": 80.0,
            "step_ms": 120.9, "steps": 12, "teacher_kind": "store", "model": "torchvision:resnet50", "batch": 256,
            "image_size": 224, "classes": 1000, "amp": "bf16", "channels_last": True, "samples_per_s": 2117.0}
    stages = {
        "build": record("ok", {"built": True, "ops": ["gather_rows", "kd_loss_fwd"]}),
        "triton_tests": record(tests_status, {"passed": 80, "failed": 1, "errors": 0, "skipped": 0,
                                              "failures": ["tests.test_loss_triton::test_edge_rows[online]"]}),
        "bench_loss": record("ok", {"rows": fake_loss_rows()}),
        "train_step": record("timeout", {"store": step, "online": {"error": "killed"}}),
    }
    device = {"name": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8, "sms": 132, "cuda": "12.8",
              "count": 1, "peak_bandwidth_bytes_s": 4.8e12, "peak_source": "table"}
    return gpu_check.assemble(cuda=True, device=device, vers={"python": "3.12", "torch": "2.11.0", "triton": "3.6.0"},
                              liger={"wheel": "liger_kernel-0.8.5-py3-none-any.whl", "status": "unpacked"},
                              stages=stages, command="python3 benchmarks/gpu_check.py", date="2026-12-05T00:00:00Z")


def test_json_document_targets_and_summary_on_fake_stages():
    doc = json.loads(json.dumps(fake_document()))  # what a reader of the file gets
    assert gpu_check.schema_problems(doc) == []
    assert doc["ok"] is False  # the train_step stage ran out of time
    by = {(t["C"], t["target"]): t for t in doc["targets"]}
    frac = by[(32000, "fraction of peak >= 0.8")]
    assert frac["value"] == pytest.approx(8192 * 32000 * 6 / 0.4e-3 / 4.8e12) and frac["met"] is True
    assert by[(32000, "speedup vs torch.compile >= 1.5")]["met"] is True
    assert by[(32000, "faster than Liger CE + KL")]["met"] is True
    assert (1000, "fraction of peak >= 0.8") not in by  # the bandwidth target is stated for C >= 32000
    assert (1000, "faster than Liger CE + KL") not in by  # Liger failed there
    text = gpu_check.summary(doc)
    assert "GPU check on NVIDIA H200, 2026-12-05" in text
    assert "train_step timeout" in text and "80 passed, 1 failed" in text
    assert "| 32000 | bfloat16 | 0.4 |" in text and "| 2x | 3x |" in text
    assert "| store | 0.1 | 0.5 | 40 | 0.3 | 80 | 121 | 2117 |" in text
    assert "| online | killed |" in text


def test_schema_problems_name_what_is_wrong():
    doc = fake_document()
    del doc["versions"]
    doc["stages"]["build"]["status"] = "maybe"
    doc["device"] = None
    problems = gpu_check.schema_problems(doc)
    assert any(p.startswith("versions") for p in problems)
    assert any("stages.build.status" in p for p in problems)
    assert any(p.startswith("device") for p in problems)


def test_stages_share_the_budget_and_a_failure_does_not_stop_the_rest(monkeypatch, tmp_path):
    seen = []

    def fake_run_stage(name, args, timeout, env):
        seen.append((name, timeout))
        return {"status": "failed" if name == "build" else "ok", "seconds": 1.0}

    monkeypatch.setattr(gpu_check, "run_stage", fake_run_stage)
    args = gpu_check.parse_args(["--out", str(tmp_path / "g.json")])
    limits = gpu_check.STAGE_LIMITS
    budget = sum(limits.values()) + 20
    records = gpu_check.run_all(args, gpu_check.STAGES, budget=budget)
    assert [n for n, _ in seen] == list(gpu_check.STAGES)
    assert records["build"]["status"] == "failed" and records["train_step"]["status"] == "ok"
    # each stage gets its own limit plus what is spare; all of them together never exceed the budget
    assert all(t >= limits[n] + 19 for n, t in seen)
    assert seen[0][1] <= budget - sum(limits[n] for n in gpu_check.STAGES[1:])


def test_the_cuda_path_writes_the_json_after_every_stage_and_fails_when_a_stage_fails(monkeypatch, tmp_path, capsys):
    import torch

    fake = fake_document()
    out = tmp_path / "gc" / "gpu_check.json"
    written = []

    def fake_run_stage(name, args, timeout, env):
        if out.exists():
            written.append(sorted(json.loads(out.read_text())["stages"]))
        return fake["stages"][name]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "device_info", lambda peak: fake["device"])
    monkeypatch.setattr(gpu_check, "run_stage", fake_run_stage)
    rc = gpu_check.main(["--out", str(out), "--work", str(tmp_path / "w"), "--wheels", str(tmp_path / "none")])
    assert rc == 1  # train_step timed out
    assert written == [["build"], ["build", "triton_tests"], ["bench_loss", "build", "triton_tests"]]
    doc = json.loads(out.read_text())
    assert gpu_check.schema_problems(doc) == [] and doc["cuda"] is True and doc["device"]["name"] == "NVIDIA H200"
    assert doc["liger"]["status"] == "no wheel"
    text = (out.parent / "summary.md").read_text()
    assert text in capsys.readouterr().out and "| 32000 | bfloat16 |" in text


def test_pytest_tally_counts_as_tests_finish_and_runs_the_graph_tests_first(tmp_path):
    from types import SimpleNamespace as R

    path = tmp_path / "tally.json"
    tally = gpu_check.PytestTally(str(path), first=("test_cuda_graph",))
    items = [R(name="test_dtypes[a]"), R(name="test_cuda_graph_capture[x]"), R(name="test_edge_rows")]
    tally.pytest_collection_modifyitems(items)
    assert [i.name for i in items] == ["test_cuda_graph_capture[x]", "test_dtypes[a]", "test_edge_rows"]
    for when, outcome, node, secs in [("setup", "passed", "t.py::test_a", 0.0), ("call", "passed", "t.py::test_a", 2.0),
                                      ("call", "failed", "t.py::test_b", 5.0), ("setup", "skipped", "t.py::test_c", 0.0),
                                      ("setup", "failed", "t.py::test_d", 0.1)]:
        tally.pytest_runtest_logreport(R(when=when, outcome=outcome, nodeid=node, duration=secs))
        if node == "t.py::test_b" and when == "call":  # written after every test: a killed run keeps it
            assert json.loads(path.read_text())["failed"] == 1
    counts = json.loads(path.read_text())
    assert {k: counts[k] for k in ("passed", "failed", "errors", "skipped")} == \
        {"passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert counts["failures"] == ["test_b", "test_d"] and counts["slowest"][0] == ["test_b", 5.0]


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--stages", "build,nonsense"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--peak-tbs", "-1"])
    with pytest.raises(SystemExit):
        bench_loss.parse_args(["--dtypes", "int8"])
