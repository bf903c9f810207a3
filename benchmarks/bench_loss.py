"""Fused KD loss, forward + backward: ours against the PyTorch composite, eager and compiled.

Baselines, in the same run:
  (a) eager: cross_entropy + kl_div on log_softmax (the usual KD recipe) + a separate EL2N
      (softmax - onehot, norm) under no_grad;
  (b) torch.compile of (a);
  (c) on GPU, Liger-Kernel's cross-entropy + KL-divergence kernels when liger_kernel is installed
      (+ the same separate EL2N, which Liger does not compute).
Every row is checked against the float64 oracle before it is timed. On GPU the table adds the
achieved bandwidth over the minimum bytes (read S, read T, write dS) and its fraction of the
device's peak, for forward + backward and for the forward alone (where our kernel writes dS).

  python benchmarks/bench_loss.py                 # CPU section (2 threads), then GPU when present
  python benchmarks/bench_loss.py --threads 2 --rounds 7 --repeat 10

On the CPU the implementations are timed in interleaved rounds and speedups are the median of the
per-round ratios, so that load from other processes on a shared machine falls on all of them alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import bench, report  # noqa: E402

from kdprune.loss import kd_loss  # noqa: E402
from kdprune.loss.testing import Case, check, failures  # noqa: E402

ALPHA, T = 0.5, 4.0

# Peak HBM bandwidth (bytes/s) by device name, for the fraction-of-peak column.
PEAK_BW = {"H100 SXM": 3.35e12, "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12,
           "H200": 4.8e12, "A100-SXM4-80GB": 2.04e12, "A100-SXM4-40GB": 1.56e12, "A100-PCIE": 1.94e12}


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
    """Liger-Kernel's CE + KL kernels (None when liger_kernel is not installed)."""
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerKLDIVLoss
    except ImportError:
        return None
    ce_fn, kl_fn = LigerCrossEntropyLoss(), LigerKLDIVLoss(reduction="batchmean", log_target=True)

    def fn(z, t, y):
        ce = ce_fn(z, y)
        kl = kl_fn(F.log_softmax(z / T, dim=1), F.log_softmax(t / T, dim=1))
        loss = (1 - ALPHA) * ce + ALPHA * T * T * kl
        with torch.no_grad():
            el2n = (torch.softmax(z.float(), dim=1) - F.one_hot(y, z.shape[1])).norm(dim=1)
        return loss, el2n
    return fn


def step(fn, z, t, y):
    """One forward + backward; returns the closure the harness times."""
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
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, C, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_()
    t = (torch.randn(B, C, generator=g) * 3).to(device=device, dtype=dtype)
    y = torch.randint(0, C, (B,), generator=g).to(device)
    return z, t, y


def verify(backend_device: str, dtype):
    """Ours against the float64 oracle on a small case of the benchmark's kind (fail loudly)."""
    case = Case(64, 1000, student_dtype=dtype, teacher_dtype=dtype, temperature=T, alpha=ALPHA)
    bad = failures(check(case, lambda *a, **k: kd_loss(*a, **k), device=backend_device))
    if bad:
        raise SystemExit(f"kd_loss disagrees with the oracle on {backend_device}: {bad}")


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


def peak_bandwidth() -> float | None:
    name = torch.cuda.get_device_name()
    for key, bw in PEAK_BW.items():
        if key in name:
            return bw
    props = torch.cuda.get_device_properties(0)
    clock, width = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    return 2 * clock * 1e3 * width / 8 if clock and width else None  # DDR: two transfers per clock


def gpu_section(args) -> list[dict]:
    verify("cuda", torch.bfloat16)
    peak = peak_bandwidth()
    liger = liger_composite()
    rows = []
    for C in (1000, 32000, 128256):
        B = 8192
        z, t, y = inputs(B, C, torch.bfloat16, "cuda")
        impls = {"ours (Triton)": ours, "eager composite": composite,
                 "torch.compile composite": torch.compile(composite)}
        if liger is not None:
            impls["Liger CE + KL"] = liger
        min_bytes = B * C * (z.element_size() + t.element_size() + z.element_size())  # S, T, dS
        times = {}
        for name, fn in impls.items():
            try:
                times[name] = bench(step(fn, z, t, y), warmup=args.warmup, repeat=args.repeat, device="cuda")
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                times[name] = None
        fwd = bench(forward_only(ours, z, t, y), warmup=args.warmup, repeat=args.repeat, device="cuda")
        base = times["eager composite"]["median_ms"] if times["eager composite"] else float("nan")
        comp = times["torch.compile composite"]["median_ms"] if times["torch.compile composite"] else float("nan")
        for name, tm in times.items():
            row = {"device": torch.cuda.get_device_name(), "B": B, "C": C, "dtype": "bfloat16", "impl": name}
            if tm is None:
                rows.append({**row, "fwd+bwd ms (median)": "OOM"})
                continue
            gbs = min_bytes / (tm["median_ms"] * 1e-3) / 1e9
            row.update({"fwd+bwd ms (median)": tm["median_ms"], "min ms": tm["min_ms"], "runs": tm["runs"],
                        "speedup vs eager": base / tm["median_ms"], "speedup vs compile": comp / tm["median_ms"],
                        "GB/s over min bytes": gbs, "fraction of peak": gbs * 1e9 / peak if peak else None})
            if name.startswith("ours"):
                fgbs = min_bytes / (fwd["median_ms"] * 1e-3) / 1e9
                row.update({"fwd ms": fwd["median_ms"], "fwd GB/s": fgbs,
                            "fwd fraction of peak": fgbs * 1e9 / peak if peak else None})
            rows.append(row)
        del z, t, y
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--repeat", type=int, default=10, help="runs per round (CPU) or in all (GPU)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (CPU)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--skip-cpu", action="store_true")
    args = p.parse_args(argv)
    rows = [] if args.skip_cpu else cpu_section(args)
    if torch.cuda.is_available():
        rows += gpu_section(args)
    else:
        print("no CUDA device: the GPU section (Triton vs eager / compile / Liger, bandwidth) is skipped\n")
    cols = ["device", "B", "C", "dtype", "impl", "fwd+bwd ms (median)", "min ms", "speedup vs eager",
            "speedup vs compile"]
    if any("GB/s over min bytes" in r for r in rows):
        cols += ["GB/s over min bytes", "fraction of peak", "fwd ms", "fwd fraction of peak"]
    report("loss", rows, cols, alpha=ALPHA, temperature=T,
           command="python benchmarks/bench_loss.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
