"""What integrity on use costs: no gather returns teacher logits whose chunk checksum (crc32, one per
~4 MiB) this process has not checked. Timed on an ImageNet-sized store (N = 1,281,167 x C = 1000,
fp16: 2.56 GB) held in the page cache:

  * the full check (``verify()``; ``prefault()`` does it while it maps the store, as training does);
  * the first random batches of a store opened without prefault, which check the chunks they touch;
  * a gather after every chunk is checked, against the same gather with checking off (the cost left
    per batch is one boolean test).

    python benchmarks/bench_store_check.py                   # the ImageNet-sized store (writes 2.6 GB)
    python benchmarks/bench_store_check.py --samples 100000  # a quick run
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import bench, record  # noqa: E402

from kdprune.store import TeacherStore  # noqa: E402


def build_store(path: str, n: int, c: int, block: int = 65536) -> None:
    g = torch.Generator().manual_seed(0)
    with TeacherStore.create(path, n, c, dtype="float16", teacher="bench_store_check synthetic") as w:
        for start in range(0, n, block):
            ids = np.arange(start, min(start + block, n))
            w.write(ids, torch.randn(len(ids), c, generator=g))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1_281_167, help="rows of the store (default ImageNet's)")
    ap.add_argument("--classes", type=int, default=1000, help="logits per row (default 1000)")
    ap.add_argument("--batch", type=int, default=1024, help="ids per gather (default 1024)")
    ap.add_argument("--dir", default="/tmp", help="where the store is written (default /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the store (reused by the next run)")
    args = ap.parse_args(argv)
    n, c, b = args.samples, args.classes, args.batch
    path = os.path.join(args.dir, f"kdprune-bench-store-check-{n}x{c}")
    try:
        if not os.path.isdir(path):
            build_store(path, n, c)
        rng = np.random.default_rng(0)
        batches = [torch.from_numpy(rng.choice(n, b, replace=False)) for _ in range(64)]
        full = TeacherStore.open(path)
        t0 = time.perf_counter()
        summary = full.verify()  # also brings the file into the page cache for what follows
        verify_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        TeacherStore.open(path).prefault()
        prefault_s = time.perf_counter() - t0
        lazy = TeacherStore.open(path)
        t0 = time.perf_counter()
        for ids in batches[:8]:
            lazy.gather(ids)
        first8_s = time.perf_counter() - t0
        for ids in batches:
            lazy.gather(ids)  # every chunk checked by now (or the rest on the next batches)
        off = TeacherStore.open(path)
        off._arrays()
        off._all_checked = True  # checking off: the cost the check leaves per batch is the difference
        it = iter(range(10**9))
        checked = bench(lambda: lazy.gather(batches[next(it) % len(batches)]), repeat=200)
        unchecked = bench(lambda: off.gather(batches[next(it) % len(batches)]), repeat=200)
        gb = summary["bytes"] / 1e9
        rows = [{"what": "verify (every chunk)", "ms": verify_s * 1e3, "GB/s": gb / verify_s},
                {"what": "prefault with the check", "ms": prefault_s * 1e3, "GB/s": gb / prefault_s},
                {"what": f"first 8 gathers of {b}, unprefaulted", "ms": first8_s * 1e3},
                {"what": f"gather {b}, all checked", "ms": checked["median_ms"]},
                {"what": f"gather {b}, checking off", "ms": unchecked["median_ms"]}]
        for r in rows:
            print(f"{r['what']:<40} {r['ms']:9.3f} ms" + (f"  {r['GB/s']:.2f} GB/s" if "GB/s" in r else ""))
        print("->", record("store_check", rows, samples=n, classes=c, batch=b, store_gb=round(gb, 3)))
    finally:
        if not args.keep and os.path.isdir(path):
            shutil.rmtree(path)


if __name__ == "__main__":
    main()
