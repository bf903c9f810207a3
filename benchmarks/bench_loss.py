"""Fused KD loss, forward + backward: ours against the PyTorch composite (eager and compiled) and Liger.

Baselines, in the same run:
  (a) eager: cross_entropy + kl_div on log_softmax (the usual KD recipe) + a separate EL2N
      (softmax - onehot, norm) under no_grad;
  (b) torch.compile of (a), compiled once per shape and dtype (static shapes);
  (c) on GPU, Liger-Kernel's cross-entropy and KL-divergence kernels run back to back, when
      liger_kernel imports (+ the log_softmax that Liger's KL takes as input, and the same separate
      EL2N, which Liger does not compute). Liger's cross-entropy writes its gradient into the logits,
      so it gets its own copy of them and runs after the KL term has read them.
Ours is checked against the float64 oracle before it is timed (Liger's loss against the composite's).

GPU: batch 8192, C in {1000, 32000, 128256}, bf16 and fp32 logits (student and teacher alike). Times
come from CUDA events around back-to-back calls (no host sync between them), so launch latency
overlaps as in training. The table adds the achieved bandwidth over the minimum bytes (read S, read T,
write dS) and its fraction of the device's peak (from ``PEAK_BANDWIDTH`` by device name, or
``--peak-tbs``), for forward + backward and, for ours, for the forward alone (which writes dS).

  python benchmarks/bench_loss.py                 # CPU section (2 threads), then GPU when present
  python benchmarks/bench_loss.py --skip-cpu --json rows.json --out runs/bench   # GPU only

Rows go through the shared harness, appended to ``loss.csv`` in the results directory (see
harness.py; ``--out`` picks the directory); ``--json PATH`` also writes every row as JSON after each
configuration, so a run cut short keeps what it measured. On the CPU the implementations are timed in
interleaved rounds and speedups are the median of the per-round ratios, so that load from other
processes on a shared machine falls on all of them alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import bench, report  # noqa: E402

from kdprune.loss import kd_loss  # noqa: E402
from kdprune.loss.testing import Case, check, failures  # noqa: E402

ALPHA, T = 0.5, 4.0
GPU_BATCH = 8192
GPU_CLASSES = (32000, 128256, 1000)  # the large-C rows first: the bandwidth targets are stated there
GPU_DTYPES = ("bfloat16", "float32")

# Peak HBM bandwidth (bytes/s) by a substring of torch.cuda.get_device_name(); the first match wins,
# so the specific names come before the generic ones (an "H100" without a suffix is the SXM part).
PEAK_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("A10G", 0.6e12),
)


def peak_bandwidth(name: str, override_tbs: float | None = None, props=None) -> tuple[float | None, str]:
    """``(bytes/s, source)`` of device ``name``'s peak memory bandwidth: ``override_tbs`` (TB/s) when
    given, else the table, else the memory clock and bus width of ``props`` (DDR: two transfers a
    clock), else ``(None, "unknown")``."""
    if override_tbs is not None:
        if not override_tbs > 0:
            raise ValueError(f"--peak-tbs must be a positive bandwidth in TB/s (e.g. 4.8), got {override_tbs}")
        return override_tbs * 1e12, "--peak-tbs"
    for key, bw in PEAK_BANDWIDTH:
        if key in name:
            return bw, "table"
    clock, width = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if clock and width:  # memory_clock_rate is in kHz
        return 2 * clock * 1e3 * width / 8, "device properties"
    return None, "unknown"


def min_bytes(B: int, C: int, student_bytes: int, teacher_bytes: int) -> int:
    """The fewest bytes any forward + backward can move: read the student and teacher logits once,
    write the student's gradient once (labels and per-row outputs are negligible)."""
    return B * C * (2 * student_bytes + teacher_bytes)


def bandwidth(nbytes: float, ms: float, peak: float | None) -> tuple[float, float | None]:
    """``(GB/s, fraction of peak)`` of moving ``nbytes`` in ``ms`` milliseconds."""
    bps = nbytes / (ms * 1e-3)
    return bps / 1e9, (bps / peak if peak else None)


def composite(z, t, y, alpha=ALPHA, temperature=T):
    """The eager PyTorch KD loss as people write it, plus EL2N."""
    ce = F.cross_entropy(z, y, ignore_index=-100)
    kl = F.kl_div(F.log_softmax(z / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                  reduction="batchmean", log_target=True)
    loss = (1 - alpha) * ce + alpha * temperature * temperature * kl
    with torch.no_grad():
        el2n = (torch.softmax(z.float(), dim=1) - F.one_hot(y.clamp_min(0), z.shape[1])).norm(dim=1)
    return loss, el2n


def liger_composite():
    """Liger-Kernel's CE + KL kernels back to back (None when liger_kernel does not import)."""
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerKLDIVLoss
    except ImportError:
        return None
    ce_fn, kl_fn = LigerCrossEntropyLoss(), LigerKLDIVLoss(reduction="batchmean", log_target=True)

    def fn(z, t, y):
        # KL first: Liger's cross-entropy overwrites z with its gradient
        kl = kl_fn(F.log_softmax(z / T, dim=1), F.log_softmax(t / T, dim=1))
        with torch.no_grad():
            el2n = (torch.softmax(z.float(), dim=1) - F.one_hot(y, z.shape[1])).norm(dim=1)
        ce = ce_fn(z, y)
        return (1 - ALPHA) * ce + ALPHA * T * T * kl, el2n
    return fn


def step(fn, z, t, y):
    """One forward + backward; returns the closure the timers call."""
    def run():
        z.grad = None
        out = fn(z, t, y)
        out[0].backward()
    return run


def forward_only(fn, z, t, y):
    """The forward as in training (z requires grad, so ours also writes dS); the graph is dropped."""
    def run():
        fn(z, t, y)
    return run


def ours(z, t, y):
    return kd_loss(z, t, y, alpha=ALPHA, temperature=T)


def inputs(B, C, dtype, device, seed=0):
    """Student logits (a leaf that requires grad), teacher logits and labels, drawn on ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    z = (torch.randn(B, C, generator=g, device=device) * 3).to(dtype).requires_grad_()
    t = (torch.randn(B, C, generator=g, device=device) * 3).to(dtype)
    y = torch.randint(0, C, (B,), generator=g, device=device)
    return z, t, y


def oracle_failures(device: str, dtype) -> list[str]:
    """Ours against the float64 oracle on a small case of the benchmark's kind ([] when it agrees)."""
    case = Case(64, 1000, student_dtype=dtype, teacher_dtype=dtype, temperature=T, alpha=ALPHA)
    return failures(check(case, lambda *a, **k: kd_loss(*a, **k), device=device))


def verify(device: str, dtype):
    """Fail loudly when ours disagrees with the oracle (the CPU section)."""
    bad = oracle_failures(device, dtype)
    if bad:
        raise SystemExit(f"kd_loss disagrees with the oracle on {device} in {dtype}: {bad}")


def liger_error(liger, device: str) -> float:
    """Largest |Liger loss - composite loss| on a small fp32 case (Liger has no float64 path)."""
    z, t, y = inputs(64, 1000, torch.float32, device, seed=1)
    want = composite(z.detach(), t, y)[0]
    got = liger(z.detach().clone(), t, y)[0]
    return float((got.float() - want.float()).abs())


def gpu_time(fn, *, warmup: int = 3, repeat: int = 7, target_ms: float = 25.0, device: str = "cuda") -> dict:
    """Milliseconds per call of ``fn``: CUDA events on the current stream around ``inner`` back-to-back
    calls (``inner`` chosen so one measurement lasts about ``target_ms``), median, min and max over
    ``repeat`` measurements. On a CPU ``device`` the wall clock stands in for the events."""
    for _ in range(warmup):
        fn()
    cuda = device.startswith("cuda")
    start, end = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else (None, None)

    def measure(inner):
        if not cuda:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            return (time.perf_counter() - t0) * 1e3 / inner
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / inner

    inner = max(1, min(200, round(target_ms / max(measure(1), 1e-3))))
    times = sorted(measure(inner) for _ in range(repeat))
    return {"median_ms": statistics.median(times), "min_ms": times[0], "max_ms": times[-1],
            "runs": repeat * inner, "inner": inner}


def interleaved(impls: dict, make_step, rounds: int, repeat: int, device=None) -> dict:
    """Time every impl in ``rounds`` interleaved rounds of ``repeat`` runs (so a burst of load from
    other processes hits all of them alike); per impl the median over rounds of the round medians,
    and per round the ratio to the first impl, whose median is the reported speedup."""
    steps = {name: make_step(fn) for name, fn in impls.items()}
    for run in steps.values():  # warm-up (and torch.compile's compilation) outside the timing
        bench(run, warmup=2, repeat=1, device=device)
    per_round = {name: [] for name in impls}
    for _ in range(rounds):
        for name, run in steps.items():
            per_round[name].append(bench(run, warmup=1, repeat=repeat, device=device))
    out = {}
    for name, res in per_round.items():
        meds = sorted(r["median_ms"] for r in res)
        out[name] = {"median_ms": statistics.median(meds), "min_ms": min(r["min_ms"] for r in res),
                     "round_medians": meds, "runs": sum(r["runs"] for r in res)}
    return out, per_round


def ratio(per_round: dict, num: str, den: str) -> float:
    """Median over rounds of time(num) / time(den)."""
    return statistics.median(a["median_ms"] / b["median_ms"] for a, b in zip(per_round[num], per_round[den]))


def cpu_section(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    verify("cpu", torch.float32)
    rows = []
    for B, C, dtype in [(512, 1000, torch.float32), (512, 1000, torch.bfloat16), (64, 32000, torch.float32)]:
        z, t, y = inputs(B, C, dtype, "cpu")
        impls = {"ours (C++)": ours, "eager composite": composite, "torch.compile composite": torch.compile(composite)}
        times, per_round = interleaved(impls, lambda fn: step(fn, z, t, y), args.rounds, args.repeat)
        for name, tm in times.items():
            rows.append({"device": "cpu", "threads": args.threads, "B": B, "C": C, "dtype": str(dtype).split(".")[-1],
                         "impl": name, "fwd+bwd ms (median)": tm["median_ms"], "min ms": tm["min_ms"],
                         "runs": tm["runs"], "round medians ms": tm["round_medians"],
                         "speedup vs eager": ratio(per_round, "eager composite", name),
                         "speedup vs compile": ratio(per_round, "torch.compile composite", name)})
    return rows


IMPLS = {"ours": "ours (Triton)", "eager": "eager composite", "compile": "torch.compile composite",
         "liger": "Liger CE + KL"}


def gpu_impls(liger, chosen=tuple(IMPLS)) -> dict:
    """Name -> (function, needs its own copy of z) for the ``chosen`` keys of ``IMPLS`` (Liger only when
    it imports). torch.compile is made fresh for each configuration, with static shapes."""
    make = {"ours": lambda: (ours, False), "eager": lambda: (composite, False),
            "compile": lambda: (torch.compile(composite, dynamic=False), False), "liger": lambda: (liger, True)}
    return {IMPLS[k]: make[k]() for k in IMPLS if k in chosen and (k != "liger" or liger is not None)}


def config_rows(B, C, dtype, times: dict, fwd: dict | None, device_name: str, peak) -> list[dict]:
    """The table rows of one (B, C, dtype): time, bandwidth over the minimum bytes, fraction of peak and
    speedups of every impl; an impl that failed (OOM, error) gets its error instead of figures."""
    es = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    nbytes = min_bytes(B, C, es, es)
    ms = {name: tm["median_ms"] for name, tm in times.items() if isinstance(tm, dict)}
    rows = []
    for name, tm in times.items():
        row = {"device": device_name, "B": B, "C": C, "dtype": dtype, "impl": name, "min bytes": nbytes}
        if not isinstance(tm, dict):
            rows.append({**row, "error": str(tm)})
            continue
        gbs, frac = bandwidth(nbytes, tm["median_ms"], peak)
        row.update({"fwd+bwd ms (median)": tm["median_ms"], "min ms": tm["min_ms"], "runs": tm["runs"],
                    "GB/s over min bytes": gbs, "fraction of peak": frac})
        for base, col in (("eager composite", "speedup vs eager"), ("torch.compile composite", "speedup vs compile"),
                          ("Liger CE + KL", "speedup vs Liger")):
            if base in ms:
                row[col] = ms[base] / tm["median_ms"]
        if name.startswith("ours") and isinstance(fwd, dict):
            fgbs, ffrac = bandwidth(nbytes, fwd["median_ms"], peak)
            row.update({"fwd ms": fwd["median_ms"], "fwd GB/s": fgbs, "fwd fraction of peak": ffrac})
        rows.append(row)
    return rows


def gpu_section(args, on_rows=None, device: str = "cuda") -> list[dict]:
    """Every (C, dtype) of ``args.classes`` x ``args.dtypes`` at batch ``args.batch`` on ``device``
    (CUDA; a CPU device runs the same code at small sizes, for the tests); calls ``on_rows(all rows so
    far)`` after each configuration. A disagreement with the oracle is printed and recorded in ours'
    rows (``oracle``), and the timing goes on: a wrong kernel's speed still says something, and the
    caller turns the disagreement into a failing exit code."""
    cuda = device.startswith("cuda")
    oracle = {}
    for dtype in args.dtypes:
        bad = oracle_failures(device, getattr(torch, dtype))
        oracle[dtype] = "ok" if not bad else "FAILED: " + "; ".join(bad)
        print(f"oracle check, {dtype}: {oracle[dtype]}", flush=True)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak, source = peak_bandwidth(name, args.peak_tbs, torch.cuda.get_device_properties(0) if cuda else None)
    print(f"{name}: peak bandwidth {peak / 1e12 if peak else float('nan'):.3g} TB/s ({source})", flush=True)
    liger = liger_composite() if cuda and "liger" in args.impls else None
    if liger is not None:
        print(f"Liger CE + KL against the composite: |loss difference| {liger_error(liger, device):.3g}", flush=True)
    empty_cache = torch.cuda.empty_cache if cuda else (lambda: None)
    rows = []
    for dtype in args.dtypes:
        for C in args.classes:
            B = args.batch
            z, t, y = inputs(B, C, getattr(torch, dtype), device)
            times = {}
            for impl, (fn, own_copy) in gpu_impls(liger, args.impls).items():
                zz = z.detach().clone().requires_grad_() if own_copy else z
                try:
                    times[impl] = gpu_time(step(fn, zz, t, y), warmup=args.warmup, repeat=args.repeat, device=device)
                except Exception as err:  # one impl failing (OOM, a compiler error) is a result, not the end
                    times[impl] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                del zz
                z.grad = None
                empty_cache()
            try:
                fwd = gpu_time(forward_only(ours, z, t, y), warmup=args.warmup, repeat=args.repeat, device=device)
            except Exception as err:
                fwd = None
                print(f"ours, forward only: {type(err).__name__}: {err}", flush=True)
            new = config_rows(B, C, dtype, times, fwd, name, peak)
            for row in new:
                if row["impl"].startswith("ours"):
                    row["oracle"] = oracle[dtype]
            rows += new
            print(f"B={B} C={C} {dtype}: " + ", ".join(
                f"{k} {v['median_ms']:.3f} ms" if isinstance(v, dict) else f"{k} {v}" for k, v in times.items()),
                flush=True)
            if on_rows is not None:
                on_rows(rows)
            del z, t, y
            empty_cache()
    return rows


def write_json(path: str, rows: list[dict], **extra) -> None:
    from kdprune.atomic import atomic_open

    with atomic_open(path) as f:
        json.dump({"rows": rows, **extra}, f, indent=1, default=str)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--repeat", type=int, default=None,
                   help="runs per round on the CPU (default 10); measurements per configuration on the GPU (default 7)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (GPU)")
    p.add_argument("--skip-cpu", action="store_true", help="only the GPU section")
    p.add_argument("--batch", type=int, default=GPU_BATCH, help="GPU batch size")
    p.add_argument("--classes", type=lambda s: [int(c) for c in s.split(",")], default=list(GPU_CLASSES),
                   help="GPU class counts, comma-separated")
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=list(GPU_DTYPES),
                   help="GPU logit dtypes, comma-separated (bfloat16, float16, float32)")
    p.add_argument("--peak-tbs", type=float, default=None,
                   help="the device's peak memory bandwidth in TB/s (default: looked up by device name)")
    p.add_argument("--impls", type=lambda s: s.split(","), default=list(IMPLS),
                   help=f"GPU implementations to time, comma-separated from {','.join(IMPLS)} (default all)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write every row to PATH as JSON")
    p.add_argument("--out", metavar="DIR", default=None, help="results directory of the CSV (see harness.py)")
    args = p.parse_args(argv)
    bad = [i for i in args.impls if i not in IMPLS]
    if bad:
        p.error(f"--impls: {bad} not among {', '.join(IMPLS)}")
    for dt in args.dtypes:
        if dt not in ("bfloat16", "float16", "float32"):
            p.error(f"--dtypes: {dt!r} is not one of bfloat16, float16, float32")
    if args.peak_tbs is not None and not args.peak_tbs > 0:
        p.error(f"--peak-tbs must be a positive bandwidth in TB/s (e.g. 4.8), got {args.peak_tbs}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cpu_args = argparse.Namespace(**{**vars(args), "repeat": args.repeat or 10})
    gpu_args = argparse.Namespace(**{**vars(args), "repeat": args.repeat or 7})
    config = {"alpha": ALPHA, "temperature": T}
    rows = [] if args.skip_cpu else cpu_section(cpu_args)
    save = (lambda r: write_json(args.json, r, **config)) if args.json else None
    if save:
        save(rows)
    if torch.cuda.is_available():
        rows += gpu_section(gpu_args, on_rows=(lambda r: save(rows + r)) if save else None)
    else:
        print("no CUDA device: the GPU section (Triton vs eager / compile / Liger, bandwidth) is skipped\n")
    cols = ["device", "B", "C", "dtype", "impl", "fwd+bwd ms (median)", "min ms", "speedup vs eager",
            "speedup vs compile"]
    if any("GB/s over min bytes" in r for r in rows):
        cols += ["speedup vs Liger", "GB/s over min bytes", "fraction of peak", "fwd ms", "fwd fraction of peak"]
    if rows:
        report("loss", rows, cols, out=args.out, **config)
    wrong = sorted({r["dtype"] for r in rows if str(r.get("oracle", "ok")) != "ok"})
    if wrong:
        print(f"kd_loss disagrees with the float64 oracle in {', '.join(wrong)} (see the rows' oracle field)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
