"""Does "f of the samples" become "f of the epoch time"? Epoch time and samples/s of each loader
backend (torch, FFCV, DALI) at keep fractions 1.0, 0.5, 0.3, 0.1, on (a) Fashion-MNIST (60k 28x28,
in memory for torch, a .beton for FFCV, images.npy for DALI) and (b) a synthetic folder of JPEGs
(``--jpeg-samples`` images of ``--jpeg-size`` px, random-resized-crop to ``--crop``), all in training
mode with the replayed augmentation, ``--workers`` workers (DataLoader processes, FFCV or DALI
threads) each.

Targets (from issue 6): epoch time at fraction f <= 1.15 x f x the full epoch's, on every backend;
FFCV >= 2x the torch DataLoader's samples/s on the JPEG folder with the same worker count.

Each (backend, fraction) builds a fresh loader over a random subset, runs a few warm-up batches (FFCV
compiles its pipeline, DataLoader workers start), then times ``--epochs`` full epochs (median).

    python benchmarks/bench_loaders.py                      # 20k JPEGs at 256 px: long on 2 cores
    python benchmarks/bench_loaders.py --jpeg-samples 4000  # what fits a shared dev box
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import report  # noqa: E402
from kdprune.data import Augment, load_fashion_mnist  # noqa: E402
from kdprune.data.folder import FolderDataset, write_jpeg_folder  # noqa: E402
from kdprune.loaders import build  # noqa: E402

FRACTIONS = (1.0, 0.5, 0.3, 0.1)


def prepare(args):
    """The two sources and their FFCV / DALI conversions (made once, reused while fresh)."""
    from kdprune.loaders.converted import read_manifest
    from kdprune.loaders.dali_backend import write_dali
    from kdprune.loaders.ffcv_backend import write_beton
    from kdprune.errors import DataError

    os.makedirs(args.work, exist_ok=True)
    sources = {"fashion-mnist": load_fashion_mnist("train")}
    folder = os.path.join(args.work, f"jpeg{args.jpeg_samples}x{args.jpeg_size}")
    if not os.path.isdir(folder):
        t = time.perf_counter()
        write_jpeg_folder(folder, args.jpeg_samples, num_classes=10, size=args.jpeg_size, seed=0)
        print(f"wrote {args.jpeg_samples} JPEGs in {time.perf_counter() - t:.1f}s", flush=True)
    sources["jpeg-folder"] = FolderDataset(folder)
    paths = {}
    for name, source in sources.items():
        for fmt, ext, write in (("ffcv", ".beton", lambda s, p: write_beton(s, p, workers=args.workers)),
                                ("dali", "_dali", write_dali)):
            path = os.path.join(args.work, f"{name}-{len(source)}{ext}")
            try:
                read_manifest(path, fmt, source)
            except DataError:
                t = time.perf_counter()
                write(source, path)
                print(f"converted {name} for {fmt} in {time.perf_counter() - t:.1f}s", flush=True)
            paths[name, fmt] = path
    return sources, paths


def time_epochs(loader, epochs: int, warmup_batches: int = 3) -> float:
    """Median seconds of a full epoch, after a few warm-up batches."""
    loader.set_epoch(0)
    for i, _ in enumerate(loader):
        if i + 1 >= warmup_batches:
            break
    times = []
    for e in range(1, epochs + 1):
        loader.set_epoch(e)
        t = time.perf_counter()
        n = sum(len(b.ids) for b in loader)
        times.append(time.perf_counter() - t)
    assert n == len(loader.order())
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jpeg-samples", type=int, default=20000)
    p.add_argument("--jpeg-size", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per point (median)")
    p.add_argument("--backends", default="torch,ffcv,dali")
    p.add_argument("--datasets", default="fashion-mnist,jpeg-folder")
    p.add_argument("--work", default="/tmp/kdprune-bench-loaders", help="where the data and conversions go")
    args = p.parse_args()

    sources, paths = prepare(args)
    rows = []
    for name in args.datasets.split(","):
        source = sources[name]
        n = len(source)
        crop = (28, 28) if name == "fashion-mnist" else (args.crop, args.crop)
        augment = Augment(seed=0, out_size=crop)
        for backend in args.backends.split(","):
            full = None
            for f in FRACTIONS:
                ids = np.sort(np.random.default_rng(1).choice(n, int(round(f * n)), replace=False))
                extra = {} if backend == "torch" else {"path": paths[name, backend]}
                loader = build(backend, source, ids, batch_size=args.batch_size, train=True, seed=0,
                               augment=augment, views=4, workers=args.workers, **extra)
                seconds = time_epochs(loader, args.epochs)
                full = seconds if f == 1.0 else full
                ratio = seconds / full
                rows.append({"dataset": name, "backend": backend, "fraction": f, "samples": len(ids),
                             "epoch_s": seconds, "samples_per_s": len(ids) / seconds,
                             "time_vs_full": ratio, "target": 1.15 * f, "met": "yes" if ratio <= 1.15 * f else "NO"})
                print(rows[-1], flush=True)
                del loader
    summary = []
    for name in args.datasets.split(","):
        rate = {r["backend"]: r["samples_per_s"] for r in rows if r["dataset"] == name and r["fraction"] == 1.0}
        if "torch" in rate and "ffcv" in rate:
            summary.append({"dataset": name, "ffcv_vs_torch": rate["ffcv"] / rate["torch"],
                            "dali_vs_torch": rate.get("dali", float("nan")) / rate["torch"]})
    report("loaders", rows, ["dataset", "backend", "fraction", "samples", "epoch_s", "samples_per_s",
                             "time_vs_full", "target", "met"],
           summary=summary, config=vars(args), torch_threads=torch.get_num_threads())
    for s in summary:
        print(f"{s['dataset']}: FFCV {s['ffcv_vs_torch']:.2f}x torch, DALI {s['dali_vs_torch']:.2f}x torch "
              f"(samples/s at fraction 1.0, {args.workers} workers each)")


if __name__ == "__main__":
    main()
