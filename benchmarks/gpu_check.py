"""One command that checks kdprune on a CUDA machine and records every figure in one JSON file.

    make gpu-check                                   # or: python3 benchmarks/gpu_check.py [--out PATH]

On a CUDA machine it runs four stages, each in its own process with its own time limit, the whole
within ``--budget`` seconds (455 by default, so it ends inside 8 minutes on an H200):

  build         ``python setup.py build_ext --inplace`` with the machine's own torch, then loads
                ``kdprune._C``;
  triton_tests  tests/test_loss_triton.py on the GPU with ``KDPRUNE_GPU_FULL=1``: every case at its
                full shape (batch 8192, C up to 128256) and the CUDA-graph captures;
  bench_loss    benchmarks/bench_loss.py's GPU section: forward + backward at B = 8192, C in {1000,
                32000, 128256}, bf16 and fp32 logits, ours against the eager composite, torch.compile
                of it and Liger-Kernel's cross-entropy + KL-divergence back to back: time, bandwidth
                over the minimum bytes and its fraction of the device's peak;
  train_step    a ResNet-50 training step at batch 256 (bf16 autocast, channels-last, SGD), teacher
                logits gathered from a store against a teacher ResNet-50 run online: the step split of
                ``kdprune train --timing`` (data, teacher, forward, loss, backward + step).

A stage that fails or runs out of time is recorded and the next one still runs; the exit code is 1
if any stage failed. ``--out`` (default runs/gpu-check/gpu_check.json) receives the device, the
versions, each stage's status, time and figures, and the targets met or missed; beside it go each
stage's log and summary.md, the Markdown summary that is also printed at the end; the JSON is
rewritten after every stage, so a run cut short keeps what it measured. Scratch files (the unpacked
Liger wheel, the teacher store, the benchmark's CSV) go to ``--work`` (default runs/gpu-check/work).
Nothing is written into tracked files.

Without CUDA it says so, checks that everything it would run imports (kdprune, the Triton kernel
module, bench_loss, the ResNet-50 constructor, Liger when its wheel is there) and exits 0 (1 if an
import fails).

It runs from a source checkout without installing anything: the repository goes on the stages'
``sys.path``, ``kernels/`` is mapped to ``kdprune.kernels`` as an install would, and the pure-Python
wheels in ``.wheels/`` (which ``make gpu-check`` downloads when they are missing and the network
allows) are unpacked into the work directory: Liger-Kernel's, and pytest with its dependencies and
tqdm, used only where the machine has none of its own. Without Liger's wheel the benchmark runs
without the Liger column, and the JSON says so.

On the lent GPU machine (no network; the wheels are carried, results come back under $OUT):

    run(command='make gpu-check GPU_CHECK_ARGS="--out $OUT/gpu_check.json"', carry=[".wheels"], timeout_s=560)

or, where the machine might lack make, the same check without it:

    run(command='if command -v make >/dev/null; then make gpu-check GPU_CHECK_ARGS="--out $OUT/gpu_check.json"; '
                'else python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json; fi', carry=[".wheels"], timeout_s=560)
"""
from __future__ import annotations

import argparse
import datetime
import glob
import importlib
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCHEMA = "kdprune-gpu-check/1"
# seconds each stage may take at most; a stage that ends early leaves its time to the next one
STAGE_LIMITS = {"build": 110, "triton_tests": 125, "bench_loss": 165, "train_step": 50}
STAGES = tuple(STAGE_LIMITS)
VERSIONED = ("torch", "triton", "torchvision", "timm", "lightning", "numpy", "liger_kernel")
DISTRIBUTIONS = {"liger_kernel": "liger-kernel"}
# pure-Python wheels carried for a machine that lacks them (file-name spellings); the machine's own win
FALLBACK_WHEELS = ("pytest", "pluggy", "iniconfig", "packaging", "pygments", "tqdm")
LOSS_TARGETS = {"fraction_of_peak": 0.8, "speedup_vs_compile": 1.5, "speedup_vs_liger": 1.0}


# ----------------------------------------------------------------------------- running from a checkout
def make_importable(work: str | None = None) -> None:
    """Put the checkout and the unpacked Liger wheel (under ``work``) first on ``sys.path``, the
    fallback wheels (pytest, tqdm, ...) last, and map ``kernels/`` to ``kdprune.kernels`` when no
    install provides it. Call before importing kdprune.loss."""
    for path in (os.path.join(work, "liger") if work else None, REPO):
        if path and os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)
    fallback = os.path.join(work, "fallback") if work else None
    if fallback and os.path.isdir(fallback) and fallback not in sys.path:
        sys.path.append(fallback)  # only what the machine lacks comes from here
    import kdprune

    try:
        found = importlib.util.find_spec("kdprune.kernels") is not None
    except ImportError:
        found = False
    if found:
        return
    init = os.path.join(REPO, "kernels", "__init__.py")
    spec = importlib.util.spec_from_file_location("kdprune.kernels", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["kdprune.kernels"] = module
    spec.loader.exec_module(module)
    kdprune.kernels = module


def find_wheel(wheels: str, project: str) -> str | None:
    """The newest wheel of ``project`` (its file-name spelling, e.g. liger_kernel) in ``wheels``, or None."""
    found = sorted(glob.glob(os.path.join(wheels, f"{project}-*.whl")))
    return found[-1] if found else None


def unpack(wheel: str, target: str) -> None:
    """Unpack a pure-Python wheel (a zip) into ``target``, once per wheel file; unpacked, because
    liger's namespace subpackages do not import from a zip on sys.path."""
    stamp = os.path.join(target, ".wheels")
    done = open(stamp).read().split() if os.path.exists(stamp) else []
    if os.path.basename(wheel) in done:
        return
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    with open(stamp, "a") as f:
        f.write(os.path.basename(wheel) + "\n")


def unpack_wheels(wheels: str, work: str) -> dict:
    """Liger's wheel into ``work/liger`` (first on the stages' path) and the fallbacks for a machine
    without them (pytest and its dependencies, tqdm) into ``work/fallback`` (last on the path).
    Returns what the JSON records about Liger, with the fallback wheels found."""
    fallback = [w for w in (find_wheel(wheels, p) for p in FALLBACK_WHEELS) if w]
    for wheel in fallback:
        unpack(wheel, os.path.join(work, "fallback"))
    wheel = find_wheel(wheels, "liger_kernel")
    found = {"fallback_wheels": [os.path.basename(w) for w in fallback]}
    if wheel is None:
        return {"wheel": None, "status": "no wheel", **found,
                "note": f"no liger_kernel-*.whl in {wheels}: the benchmark runs without Liger "
                        f"(download it with: pip download --no-deps -d {wheels} liger-kernel)"}
    unpack(wheel, os.path.join(work, "liger"))
    return {"wheel": os.path.basename(wheel), "status": "unpacked", **found}


# ----------------------------------------------------------------------------- facts about the run
def versions() -> dict:
    """Versions of python and of every package the check uses (None for one that is not there)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(DISTRIBUTIONS.get(name, name))
        except metadata.PackageNotFoundError:  # a build without metadata: the imported module may say
            out[name] = getattr(sys.modules.get(name), "__version__", None)
    return out


def commit() -> str:
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def device_info(peak_tbs: float | None) -> dict:
    """The CUDA device: name, capability, memory, SMs, CUDA version and the peak bandwidth used."""
    import torch

    from bench_loss import peak_bandwidth

    props = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    peak, source = peak_bandwidth(name, peak_tbs, props)
    return {"name": name, "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count, "cuda": torch.version.cuda, "count": torch.cuda.device_count(),
            "peak_bandwidth_bytes_s": peak, "peak_source": source}


# ----------------------------------------------------------------------------- the stages (child side)
def stage_build(args) -> tuple[int, dict]:
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4))
    rc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=REPO, env=env).returncode
    if rc != 0:
        return rc, {"built": False}
    make_importable(args.work)
    from kdprune import _native

    _native.load()
    import torch

    return 0, {"built": True, "ops": sorted(n for n in ("kd_loss_fwd", "gather_rows") if hasattr(torch.ops.kdprune, n))}


class PytestTally:
    """A pytest plugin that writes the counts so far to ``path`` after every test, so a run killed at
    its time limit still reports what passed and failed (and the slowest tests, to trim the grid).
    It also moves ``first`` tests to the front of the run."""

    def __init__(self, path: str, first: tuple = ()):
        self.path, self.first = path, first
        self.counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "slowest": []}

    def pytest_collection_modifyitems(self, items):
        items.sort(key=lambda item: not any(item.name.startswith(f) for f in self.first))

    def pytest_runtest_logreport(self, report):
        c = self.counts
        if report.when == "call" or report.outcome != "passed":
            kind = {"passed": "passed", "skipped": "skipped"}.get(report.outcome)
            kind = kind or ("failed" if report.when == "call" else "errors")
            c[kind] += 1
            if kind in ("failed", "errors"):
                c["failures"].append(report.nodeid.split("::", 1)[-1])
            c["slowest"] = sorted(c["slowest"] + [[report.nodeid.split("::", 1)[-1], round(report.duration, 2)]],
                                  key=lambda x: -x[1])[:8]
            write_json(self.path, c)


def stage_triton_tests(args) -> tuple[int, dict]:
    make_importable(args.work)
    import pytest

    os.environ["KDPRUNE_GPU_FULL"] = "1"
    # the CUDA-graph captures first: they are the part no machine without a GPU can run
    tally = PytestTally(args.result, first=("test_cuda_graph",))
    rc = int(pytest.main(["-q", "-p", "no:cacheprovider", os.path.join(REPO, "tests", "test_loss_triton.py")],
                         plugins=[tally]))
    return rc, tally.counts


def stage_bench_loss(args) -> tuple[int, dict]:
    make_importable(args.work)
    import bench_loss

    argv = ["--skip-cpu", "--json", args.result, "--out", args.work]
    if args.peak_tbs is not None:
        argv += ["--peak-tbs", str(args.peak_tbs)]
    sys.argv = [os.path.join(HERE, "bench_loss.py"), *argv]
    rc = bench_loss.main(argv)
    return rc, None  # bench_loss wrote its rows to args.result itself, after every configuration


def stage_train_step(args) -> tuple[int, dict]:
    make_importable(args.work)
    out, rc = {}, 0
    for kind in ("store", "online"):
        try:
            out[kind] = time_training(kind, device="cuda", work=args.work, steps=args.train_steps)
        except Exception as err:  # the other teacher's figure is still worth having
            out[kind] = {"error": f"{type(err).__name__}: {err}"}
            rc = 1
        print(f"{kind} teacher: {out[kind]}", flush=True)
        write_json(args.result, out)  # kept if the stage runs out of time during the next one
    return rc, out


class PremadeBatches:
    """A loader of ``steps`` batches cycled from a few pre-made ones already on the device, so the
    step's data phase holds only the loop's own overhead and the other phases are the model's."""

    def __init__(self, batches, steps: int):
        self.batches, self.steps = batches, steps

    def __len__(self):
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.steps))


def make_store(path: str, num_samples: int, num_classes: int):
    """A teacher store of random fp16 logits (what matters here is the gather, not the values)."""
    import torch

    from kdprune.store import TeacherStore

    with TeacherStore.create(path, num_samples, num_classes, dtype="float16", overwrite=True) as writer:
        for start in range(0, num_samples, 4096):
            ids = torch.arange(start, min(start + 4096, num_samples))
            writer.write(ids, torch.randn(len(ids), num_classes) * 3)
    return TeacherStore.open(path)


def time_training(kind: str, *, device: str, work: str, steps: int = 12, warmup_steps: int = 3,
                  batch: int = 256, image_size: int = 224, num_classes: int = 1000,
                  model: str = "torchvision:resnet50", amp: str = "bf16") -> dict:
    """Mean milliseconds per phase of a training step with the teacher ``kind`` ("store" or "online"),
    from ``kdprune.fit(timing=True)`` after an untimed warm-up run of ``warmup_steps`` steps."""
    import torch

    import kdprune
    from kdprune.loaders import Batch
    from kdprune.train.config import TrainConfig
    from kdprune.train.teacher import OnlineTeacher, StoredTeacher

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    num_samples = 4 * batch
    perm = torch.randperm(num_samples)
    batches = [Batch(torch.randn(batch, 3, image_size, image_size, device=device),
                     torch.randint(0, num_classes, (batch,), device=device), perm[i * batch:(i + 1) * batch].to(device))
               for i in range(4)]
    if kind == "store":
        teacher = StoredTeacher(make_store(os.path.join(work, "store"), num_samples, num_classes))
    else:
        net = kdprune.build_model(model, num_classes, 3).to(device, memory_format=torch.channels_last)
        teacher = OnlineTeacher(net)
    student = kdprune.build_model(model, num_classes, 3)
    cfg = TrainConfig(model=model, epochs=1, batch_size=batch, lr=0.01, schedule="constant", warmup=0.0,
                      alpha=0.5, temperature=4.0, device=device, amp=amp, channels_last=True, log_every=0)
    loss = kdprune.KDLoss(alpha=0.5, temperature=4.0)
    run = lambda n: kdprune.fit(student, PremadeBatches(batches, n), loss_fn=loss, teacher=teacher,  # noqa: E731
                                config=cfg, progress=False, timing=True)
    run(warmup_steps)  # cuDNN autotuning, Triton compilation, the allocator's pools
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    timing = dict(run(steps).timing)
    timing.update({"teacher_kind": kind, "model": model, "batch": batch, "image_size": image_size,
                   "classes": num_classes, "amp": amp, "channels_last": True, "cudnn_benchmark": True,
                   "samples_per_s": batch * 1e3 / timing["step_ms"]})
    if device.startswith("cuda"):
        timing["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return timing


CHILD_STAGES = {"build": stage_build, "triton_tests": stage_triton_tests, "bench_loss": stage_bench_loss,
                "train_step": stage_train_step}


def child_main(args) -> int:
    """Run one stage in this process and write its result JSON (the parent reads it back)."""
    sys.path.insert(0, HERE)
    rc, result = CHILD_STAGES[args.stage](args)
    if result is not None:
        write_json(args.result, result)
    return int(rc or 0)


# ----------------------------------------------------------------------------- the parent
def tail(path: str, chars: int = 3000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


def run_stage(name: str, args, timeout: float, env: dict) -> dict:
    """Run stage ``name`` in a child process (its own process group, killed whole at ``timeout``);
    returns its record: status ok / failed / timeout, seconds, its log's tail and its result."""
    outdir = os.path.dirname(os.path.abspath(args.out))
    log, result = os.path.join(outdir, f"{name}.log"), os.path.join(args.work, f"{name}.json")
    if os.path.exists(result):
        os.remove(result)
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", name, "--result", result, "--work", args.work,
           "--train-steps", str(args.train_steps)]
    if args.peak_tbs is not None:
        cmd += ["--peak-tbs", str(args.peak_tbs)]
    print(f"[gpu-check] {name}: running (limit {timeout:.0f} s, log {log})", flush=True)
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
    record = {"status": status, "returncode": rc, "seconds": round(time.monotonic() - start, 1),
              "limit_s": round(timeout), "log": os.path.relpath(log, outdir), "log_tail": tail(log)}
    try:
        with open(result) as f:
            record["result"] = json.load(f)
    except (OSError, ValueError):
        record["result"] = None
    print(f"[gpu-check] {name}: {status} in {record['seconds']} s", flush=True)
    return record


def stage_env(args) -> dict:
    """The children's environment: the checkout and the unpacked Liger wheel on PYTHONPATH."""
    paths = [REPO, os.path.join(args.work, "liger"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), PYTHONUNBUFFERED="1")


def run_all(args, stages, budget: float, on_stage=None) -> dict:
    """Every stage in order; stage i may use what is left of the budget minus the limits of the stages
    after it (so a fast stage hands its spare time on and none can starve the later ones).
    ``on_stage(records so far)`` is called after each stage."""
    deadline = time.monotonic() + budget
    env = stage_env(args)
    records = {}
    for i, name in enumerate(stages):
        later = sum(STAGE_LIMITS[s] for s in stages[i + 1:])
        records[name] = run_stage(name, args, max(deadline - time.monotonic() - later, 5.0), env)
        if on_stage is not None:
            on_stage(records)
    return records


# ----------------------------------------------------------------------------- figures and summary
def loss_rows(record: dict | None) -> list[dict]:
    result = (record or {}).get("result") or {}
    return [r for r in result.get("rows", []) if isinstance(r, dict)]


def loss_targets(rows: list[dict]) -> list[dict]:
    """For each (C, dtype) of ours: the stated targets, met or not (>= 80% of peak bandwidth at
    C >= 32000 in bf16; at least 1.5x torch.compile; faster than Liger's CE + KL)."""
    out = []
    for r in rows:
        if not str(r.get("impl", "")).startswith("ours") or "fwd+bwd ms (median)" not in r:
            continue
        key = {"C": r["C"], "dtype": r["dtype"]}
        if r["C"] >= 32000 and r["dtype"] == "bfloat16" and r.get("fraction of peak") is not None:
            out.append({**key, "target": "fraction of peak >= 0.8", "value": r["fraction of peak"],
                        "met": r["fraction of peak"] >= LOSS_TARGETS["fraction_of_peak"]})
        if "speedup vs compile" in r:
            out.append({**key, "target": "speedup vs torch.compile >= 1.5", "value": r["speedup vs compile"],
                        "met": r["speedup vs compile"] >= LOSS_TARGETS["speedup_vs_compile"]})
        if "speedup vs Liger" in r:
            out.append({**key, "target": "faster than Liger CE + KL", "value": r["speedup vs Liger"],
                        "met": r["speedup vs Liger"] > LOSS_TARGETS["speedup_vs_liger"]})
    return out


def assemble(*, cuda: bool, device: dict | None, vers: dict, liger: dict, stages: dict, command: str,
             imports: dict | None = None, date: str | None = None) -> dict:
    """The JSON document: the run's facts, every stage record, the loss targets and ``ok``."""
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ok = all(s.get("status") in ("ok", "skipped") for s in stages.values())
    ok = ok and all(v == "ok" or v.startswith("absent") for v in (imports or {}).values())
    return {"schema": SCHEMA, "date": date, "command": command, "commit": commit(), "host_cpus": os.cpu_count(),
            "cuda": cuda, "device": device, "versions": vers, "liger": liger, "imports": imports,
            "stages": stages, "targets": loss_targets(loss_rows(stages.get("bench_loss"))), "ok": ok}


REQUIRED = {"schema": str, "date": str, "command": str, "cuda": bool, "versions": dict, "liger": dict,
            "stages": dict, "targets": list, "ok": bool}


def schema_problems(doc: dict) -> list[str]:
    """What is missing or mistyped in a gpu-check JSON document ([] when it is well formed)."""
    bad = [f"{k}: missing or not {t.__name__}" for k, t in REQUIRED.items() if not isinstance(doc.get(k), t)]
    if doc.get("schema") != SCHEMA:
        bad.append(f"schema: {doc.get('schema')!r} is not {SCHEMA!r}")
    if doc.get("cuda") and not isinstance(doc.get("device"), dict):
        bad.append("device: missing on a CUDA run")
    for name, st in (doc.get("stages") or {}).items():
        if st.get("status") not in ("ok", "failed", "timeout", "skipped"):
            bad.append(f"stages.{name}.status: {st.get('status')!r}")
        if not isinstance(st.get("seconds"), (int, float)):
            bad.append(f"stages.{name}.seconds: missing")
    return bad


def fmt(v, spec=".3g") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def loss_table(rows: list[dict], peak) -> list[str]:
    ours = [r for r in rows if str(r.get("impl", "")).startswith("ours") and "fwd+bwd ms (median)" in r]
    if not ours:
        return []
    peak_txt = f"{peak / 1e12:.3g} TB/s" if peak else "unknown"
    lines = [f"Fused KD loss, forward + backward, batch {ours[0]['B']} (bandwidth over the minimum bytes: "
             f"read S, read T, write dS; peak {peak_txt}):", "",
             "| C | logits | ours ms | GB/s | of peak | fwd of peak | vs eager | vs torch.compile | vs Liger |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in ours:
        frac = lambda x: "" if x is None else f"{100 * x:.0f}%"  # noqa: E731
        lines.append(f"| {r['C']} | {r['dtype']} | {fmt(r['fwd+bwd ms (median)'])} | {fmt(r.get('GB/s over min bytes'), '.0f')} "
                     f"| {frac(r.get('fraction of peak'))} | {frac(r.get('fwd fraction of peak'))} "
                     f"| {fmt(r.get('speedup vs eager'))}x | {fmt(r.get('speedup vs compile'))}x "
                     f"| {fmt(r.get('speedup vs Liger')) + 'x' if 'speedup vs Liger' in r else 'n/a'} |")
    return lines + [""]


def train_table(record: dict | None) -> list[str]:
    result = (record or {}).get("result") or {}
    if not result:
        return []
    any_row = next((r for r in result.values() if "step_ms" in r), None)
    head = (f"{any_row['model']} training step, batch {any_row['batch']}, {any_row['amp']} autocast, channels-last "
            "(ms per step, the split of `kdprune train --timing`):") if any_row else "Training step:"
    lines = [head, "", "| teacher | data | teacher | forward | loss | backward + step | step | samples/s |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, r in result.items():
        if "step_ms" not in r:
            lines.append(f"| {kind} | {r.get('error', 'no figures')} |||||||")
            continue
        lines.append(f"| {kind} | " + " | ".join(fmt(r.get(f"{p}_ms")) for p in
                                                ("data", "teacher", "forward", "loss", "backward_step", "step"))
                     + f" | {fmt(r['samples_per_s'], '.0f')} |")
    return lines + [""]


def summary(doc: dict) -> str:
    """The Markdown a maintainer pastes into the README: device, command, date, stages and figures."""
    dev, v = doc.get("device") or {}, doc["versions"]
    lines = [f"GPU check on {dev.get('name', 'no CUDA device')}, {doc['date'][:10]}"
             + (f" (commit {doc['commit']})" if doc.get("commit") else "") + f": `{doc['command']}`", "",
             "torch " + fmt(v.get("torch")) + ", triton " + fmt(v.get("triton")) + ", CUDA " + (dev.get("cuda") or "n/a")
             + ", liger-kernel " + (v.get("liger_kernel") or "absent") + ".", ""]
    if doc.get("imports"):
        lines += ["Imports: " + ", ".join(f"{k} {s}" for k, s in doc["imports"].items()) + ".", ""]
    stages = doc["stages"]
    if stages:
        lines += ["Stages: " + "; ".join(f"{n} {s['status']} ({fmt(s['seconds'], '.0f')} s)" for n, s in stages.items())
                  + ".", ""]
    tests = (stages.get("triton_tests") or {}).get("result") or {}
    if tests:
        lines += [f"Triton tests at full shapes on the GPU: {tests.get('passed', 0)} passed, {tests.get('failed', 0)} "
                  f"failed, {tests.get('errors', 0)} errors, {tests.get('skipped', 0)} skipped"
                  + (": " + ", ".join(tests["failures"][:10]) if tests.get("failures") else "") + ".", ""]
    lines += loss_table(loss_rows(stages.get("bench_loss")), dev.get("peak_bandwidth_bytes_s"))
    if doc["targets"]:
        missed = [t for t in doc["targets"] if not t["met"]]
        lines += [f"Targets: {len(doc['targets']) - len(missed)} of {len(doc['targets'])} met"
                  + ("; missed: " + "; ".join(f"C={t['C']} {t['dtype']} {t['target']} ({fmt(t['value'])})"
                                              for t in missed) if missed else "") + ".", ""]
    lines += train_table(stages.get("train_step"))
    return "\n".join(lines).rstrip() + "\n"


def write_json(path: str, doc) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- without CUDA
def check_imports(work: str, liger: dict) -> dict:
    """Import everything the GPU stages would run; ``{what: "ok" | "absent (...)" | "FAILED: ..."}``."""
    def resnet50():
        import kdprune
        kdprune.build_model("torchvision:resnet50", 1000, 3)

    checks = {
        "kdprune": lambda: (make_importable(work), importlib.import_module("kdprune.loss")),
        "kdprune.kernels.kd_loss": lambda: importlib.import_module("kdprune.kernels.kd_loss"),
        "bench_loss": lambda: importlib.import_module("bench_loss"),
        "pytest": lambda: importlib.import_module("pytest"),
        "resnet50": resnet50,
        "kdprune.fit": lambda: importlib.import_module("kdprune.train.loop").fit,
    }
    if liger.get("wheel"):
        checks["liger_kernel"] = lambda: importlib.import_module("liger_kernel.transformers")
    out = {}
    for name, fn in checks.items():
        try:
            fn()
            out[name] = "ok"
        except Exception as err:
            out[name] = f"FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if not liger.get("wheel"):
        out["liger_kernel"] = "absent (no wheel: the GPU run would go without Liger)"
    return out


# ----------------------------------------------------------------------------- entry point
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring for the stages and the device command.")
    p.add_argument("--out", default=os.path.join("runs", "gpu-check", "gpu_check.json"),
                   help="the JSON file to write (logs and summary.md go beside it)")
    p.add_argument("--work", default=os.path.join(REPO, "runs", "gpu-check", "work"),
                   help="scratch directory: the unpacked Liger wheel, the teacher store, the benchmark's CSV")
    p.add_argument("--wheels", default=os.path.join(REPO, ".wheels"), help="where the liger-kernel wheel is")
    p.add_argument("--budget", type=float, default=455.0, help="seconds for all stages together (default 455)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--peak-tbs", type=float, default=None,
                   help="the device's peak memory bandwidth in TB/s (default: a table by device name)")
    p.add_argument("--train-steps", type=int, default=12, help="timed ResNet-50 steps per teacher kind")
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a child running one stage
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.work = os.path.abspath(args.work)
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        p.error(f"--stages: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    args.stage_list = tuple(s for s in STAGES if s in stages)  # always in the order that makes sense
    if args.peak_tbs is not None and not args.peak_tbs > 0:
        p.error(f"--peak-tbs must be a positive bandwidth in TB/s (e.g. 4.8), got {args.peak_tbs}")
    if args.budget < 30:
        p.error(f"--budget must be at least 30 seconds, got {args.budget}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    if args.stage:
        return child_main(args)
    sys.path.insert(0, HERE)
    command = "python3 benchmarks/gpu_check.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    liger = unpack_wheels(args.wheels, args.work)
    try:
        make_importable(args.work)
    except Exception as err:  # the stages (or, without CUDA, the import check) report it in full
        print(f"[gpu-check] kdprune does not import here: {type(err).__name__}: {err}", flush=True)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        print("[gpu-check] no CUDA device on this machine: nothing is measured; checking that every stage's "
              "code imports", flush=True)
        imports = check_imports(args.work, liger)
        doc = assemble(cuda=False, device=None, vers=versions(), liger=liger, stages={}, command=command,
                       imports=imports)
    else:
        try:
            device = device_info(args.peak_tbs)
        except Exception as err:  # e.g. the kernels fail to import: still run (and record) every stage
            device = {"name": torch.cuda.get_device_name(0), "capability": "?", "memory_gib": None, "cuda": torch.version.cuda,
                      "peak_bandwidth_bytes_s": None, "peak_source": "unknown", "error": f"{type(err).__name__}: {err}"}
        print(f"[gpu-check] {device['name']} (sm {device['capability']}, {device['memory_gib']} GiB), "
              f"peak {fmt((device['peak_bandwidth_bytes_s'] or 0) / 1e12)} TB/s ({device['peak_source']})", flush=True)
        vers = versions()
        document = lambda records: assemble(cuda=True, device=device, vers=vers, liger=liger,  # noqa: E731
                                            stages=dict(records), command=command)
        stages = run_all(args, args.stage_list, args.budget, on_stage=lambda r: write_json(args.out, document(r)))
        doc = document(stages)
    write_json(args.out, doc)
    text = summary(doc)
    with open(os.path.join(os.path.dirname(os.path.abspath(args.out)), "summary.md"), "w") as f:
        f.write(text)
    print("\n" + text)
    print(f"[gpu-check] wrote {args.out}")
    if not cuda:
        failed = [k for k, v in doc["imports"].items() if v.startswith("FAILED")]
        print("[gpu-check] no CUDA: every import checked" + (f", but these failed: {failed}" if failed else ", all fine"))
        return 1 if failed else 0
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
