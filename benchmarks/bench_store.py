"""Teacher-store gather speed: random batches of ``--batch`` ids from an ImageNet-sized store
(N = 1,281,167 samples x C = 1000 classes, fp16: 2.56 GB) held in the page cache.

Compared in the same run, on the same file:
  * ours          TeacherStore.gather (C++ gather_rows: rows copied 8 at a time, chunks shared by threads)
  * ours, out=    the same into a preallocated output (what a loader with a reused buffer pays)
  * numpy memmap  ``np.memmap(...)[ids]`` fancy indexing
  * torch.from_file + index_select
and against a plain memcpy of the same number of bytes (``torch`` ``copy_`` of a contiguous
``--batch``-row block at a random offset of the same mapping: the same memory, read sequentially).

Targets: >= 3x the numpy memmap gather, >= 60 % of the memcpy bandwidth, < 1 ms per
1024 x 1000 fp16 batch. The store file lives in ``--dir`` (default /tmp, not the repository) and is
deleted at the end unless ``--keep``. Each method is timed in ``--rounds`` interleaved rounds
(median of ``--repeat`` batches each); the table gives the median over rounds, since the machine's
cores are shared.

    python benchmarks/bench_store.py                    # the ImageNet-sized store (writes 2.6 GB)
    python benchmarks/bench_store.py --samples 100000   # a quick run
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import bench, report  # noqa: E402

from kdprune.store import TeacherStore, pages  # noqa: E402


def build_store(path: str, n: int, c: int, block: int = 65536) -> float:
    """Write a dense fp16 store of n x c with cheap, row-distinct values; returns seconds taken."""
    t0 = time.perf_counter()
    cols = torch.arange(c, dtype=torch.float32)
    with TeacherStore.create(path, n, c, dtype="float16", teacher="bench_store synthetic") as w:
        for start in range(0, n, block):
            ids = np.arange(start, min(start + block, n))
            rows = torch.from_numpy(ids % 977).float()[:, None] * 0.01 + cols[None, :] * 0.001
            w.write(ids, rows)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1_281_167)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()],
                    help="intra-op thread counts to time ours at (default: 1 and torch's default)")
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--keep", action="store_true", help="keep the store (reused by the next run)")
    args = ap.parse_args(argv)

    n, c, b = args.samples, args.classes, args.batch
    path = os.path.join(args.dir, f"kdprune-bench-store-{n}x{c}")
    built, huge = None, None
    try:
        if not os.path.isdir(path):
            built = build_store(path, n, c)
            print(f"wrote {path} in {built:.1f} s")
        store = TeacherStore.open(path)
        t0 = time.perf_counter()
        store.verify()  # reads every byte once: the file is now in the page cache
        verify_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.prefault()  # what training does (StoredTeacher): every page mapped before the first step
        print(f"prefault (map every page): {time.perf_counter() - t0:.2f} s")
        huge = pages.huge_share(store._arrays()["values"][0].data_ptr())
        print(f"store mapping in 2 MiB pages: {'unknown' if huge is None else f'{huge:.0%}'}")
        rows = run(store, path, n, c, b, args)
    finally:
        if not args.keep and os.path.isdir(path):
            shutil.rmtree(path)
    file_gb = n * c * 2 / 1e9
    extra = {"samples": n, "classes": c, "batch": b, "file_gb": file_gb,
             "huge_page_share": huge, "verify_s": verify_s, "verify_gb_s": file_gb / verify_s, "build_s": built}
    print(f"\nverify (crc32 of every chunk, {file_gb:.2f} GB): {verify_s:.2f} s = {file_gb / verify_s:.2f} GB/s")
    report("store", rows, ["method", "ms_per_batch", "GB_s", "x_numpy", "frac_memcpy", "p90_ms"], **extra)


def run(store, path, n, c, b, args):
    values = os.path.join(path, "values.bin")
    mm = np.memmap(values, dtype=np.float16, mode="r", shape=(n, c))
    tf = torch.from_file(values, shared=False, size=n * c, dtype=torch.float16).view(n, c)
    # the baselines get their pages mapped too, so that no method pays page faults the others do not
    mm.view(np.uint8).reshape(-1)[::4096].sum()
    tf.view(torch.uint8).reshape(-1)[::4096].sum()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, n, size=b) for _ in range(64)]
    tbatches = [torch.from_numpy(x) for x in batches]
    starts = rng.integers(0, n - b, size=64)
    out = torch.empty(b, c, dtype=torch.float16)
    dst = torch.empty(b, c, dtype=torch.float16)
    src = store._arrays()["values"][0]  # the store's own mapping, for the memcpy reference
    k = [0]

    def nxt():
        k[0] = (k[0] + 1) % 64
        return k[0]

    # sanity: every method returns the same rows
    ref = torch.from_numpy(np.asarray(mm[batches[0]]))
    assert torch.equal(store.gather(batches[0]), ref) and torch.equal(tf.index_select(0, tbatches[0]), ref)

    def with_threads(fn, threads):
        def run():
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                fn()
            finally:
                torch.set_num_threads(before)
        return run

    methods = {}
    for t in sorted(set(args.threads)):
        methods[f"ours (TeacherStore.gather), {t} thr"] = with_threads(lambda: store.gather(tbatches[nxt()]), t)
        methods[f"ours, out= reused, {t} thr"] = with_threads(lambda: store.gather(tbatches[nxt()], out=out), t)
    methods.update({
        "numpy memmap fancy index": lambda: mm[batches[nxt()]],
        "torch.from_file + index_select": lambda: tf.index_select(0, tbatches[nxt()]),
        "memcpy (contiguous block, same bytes)": lambda: dst.copy_(src[starts[nxt()]:][:b]),
    })
    runs = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            runs[name].append(bench(fn, warmup=5, repeat=args.repeat))
    med = {name: statistics.median(r["median_ms"] for r in rs) for name, rs in runs.items()}
    p90 = {name: statistics.median(r["p90_ms"] for r in rs) for name, rs in runs.items()}
    nbytes = b * c * 2
    memcpy_gb_s = nbytes / med["memcpy (contiguous block, same bytes)"] / 1e6
    return [{"method": name, "ms_per_batch": ms, "GB_s": nbytes / ms / 1e6,
             "x_numpy": med["numpy memmap fancy index"] / ms, "frac_memcpy": nbytes / ms / 1e6 / memcpy_gb_s,
             "p90_ms": p90[name], "rounds_ms": [r["median_ms"] for r in runs[name]]}
            for name, ms in med.items()]


if __name__ == "__main__":
    main()
