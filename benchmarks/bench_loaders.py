"""Does "f of the samples" become "f of the epoch time"? Epoch time and samples/s of each loader
backend (torch, FFCV, DALI) at keep fractions 1.0, 0.5, 0.3, 0.1, on (a) Fashion-MNIST (60k 28x28,
in memory for torch, a .beton for FFCV, images.npy for DALI; shuffled, no crop unless
``--fmnist-crop``) and (b) a synthetic folder of JPEGs (``--jpeg-samples`` images of ``--jpeg-size``
px, training with the replayed random-resized-crop to ``--crop``), ``--workers`` workers (DataLoader
processes, FFCV or DALI threads) each.

Targets (from issue 6): epoch time at fraction f <= 1.15 x f x the full epoch's, on every backend;
FFCV >= 2x the torch DataLoader's samples/s on the JPEG folder with the same worker count. Every
backend replays the store's crop: torch and DALI with ``Augment.apply`` (bilinear grid_sample, in the
DataLoader's workers for torch, in the main process for DALI), FFCV with the same sampling compiled
into its decode threads (``loaders/crop_kernel.py``).

Each (backend, fraction) builds a loader over a random subset and runs a few warm-up batches (FFCV
compiles its pipeline, DataLoader workers start); then all the loaders of a dataset (every backend at
every fraction) take turns for ``--epochs`` rounds of one full epoch each, and each reports its median
epoch. The epoch time at fraction f against the full epoch's is the median over rounds of that
round's ratio, so that both epochs of a ratio ran within seconds of each other.

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


def time_fractions(loaders: dict, rounds: int, warmup_batches: int = 3, pause: float = 0.0) -> tuple[dict, dict]:
    """Seconds of each round's epoch, and of its first batch, for each loader. The loaders take
    turns, one epoch each per round, so a change in the machine's load hits every loader alike
    rather than one. ``pause``: seconds idle before each timed epoch (an epoch that starts on an idle
    machine, as after an evaluation pass or a checkpoint's write)."""
    for loader in loaders.values():  # FFCV compiles, DataLoader workers start, DALI builds
        loader.set_epoch(0)
        for i, _ in enumerate(loader):
            if i + 1 >= warmup_batches:
                break
    times, first = {f: [] for f in loaders}, {f: [] for f in loaders}
    for r in range(1, rounds + 1):
        for f, loader in loaders.items():
            loader.set_epoch(r)
            if pause:
                time.sleep(pause)
            t = time.perf_counter()
            batches = iter(loader)
            n = len(next(batches).ids)
            first[f].append(time.perf_counter() - t)
            n += sum(len(b.ids) for b in batches)
            times[f].append(time.perf_counter() - t)
            assert n == len(loader.order())
    return times, first


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jpeg-samples", type=int, default=20000)
    p.add_argument("--jpeg-size", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per point (median)")
    p.add_argument("--backends", default="torch,ffcv,dali")
    p.add_argument("--datasets", default="fashion-mnist,jpeg-folder")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch threads in the main process (0: leave torch's default); on a shared, "
                        "oversubscribed box 2 OpenMP threads can make small element-wise ops 100x slower")
    p.add_argument("--fmnist-crop", action="store_true", help="random-resized-crop Fashion-MNIST too")
    p.add_argument("--pause-ms", type=float, default=0.0,
                   help="idle this long before each timed epoch: on the dev VM an epoch that starts after "
                        "30 ms idle runs slower, which short epochs (small fractions) feel most")
    p.add_argument("--tag", default="", help="results go to benchmarks/results/loaders[-TAG].json")
    p.add_argument("--work", default="/tmp/kdprune-bench-loaders", help="where the data and conversions go")
    args = p.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    sources, paths = prepare(args)
    rows = []
    for name in args.datasets.split(","):
        source = sources[name]
        n = len(source)
        # Fashion-MNIST measures the read path itself (a 28 px crop would only add the same resampling
        # cost to every backend); the JPEG folder trains as ImageNet does, random-resized-crop to --crop
        augment = None if name == "fashion-mnist" and not args.fmnist_crop else \
            Augment(seed=0, out_size=(28, 28) if name == "fashion-mnist" else (args.crop, args.crop))
        loaders = {}
        for backend in args.backends.split(","):
            for f in FRACTIONS:
                ids = np.sort(np.random.default_rng(1).choice(n, int(round(f * n)), replace=False))
                extra = {} if backend == "torch" else {"path": paths[name, backend]}
                loaders[backend, f] = build(backend, source, ids, batch_size=args.batch_size,
                                            train=True, seed=0, augment=augment, views=4,
                                            workers=args.workers, **extra)
        # every (backend, fraction) takes its turn in every round: load drift hits all rows alike, so
        # both the fraction ratios and the backend ratios compare like with like
        times, _ = time_fractions(loaders, args.epochs, pause=args.pause_ms / 1e3)
        seconds = {key: statistics.median(t) for key, t in times.items()}
        for (backend, f), loader in loaders.items():
            # the median of each round's ratio: the box's speed drifts 2x within an hour, and a
            # round (one epoch of every loader) is short enough for both epochs to see the same box
            ratios = [t / full for t, full in zip(times[backend, f], times[backend, 1.0])]
            ratio = statistics.median(ratios)
            samples = len(loader.ids)
            rows.append({"dataset": name, "backend": backend, "fraction": f, "samples": samples,
                         "epoch_s": seconds[backend, f], "samples_per_s": samples / seconds[backend, f],
                         "time_vs_full": ratio, "target": 1.15 * f, "met": "yes" if ratio <= 1.15 * f else "NO",
                         # every round, for the spread behind the medians
                         "rounds_epoch_s": times[backend, f], "rounds_time_vs_full": ratios})
            print({k: v for k, v in rows[-1].items() if not k.startswith("rounds_")}, flush=True)
        del loaders
    summary = []
    for name in args.datasets.split(","):
        rate = {r["backend"]: r["samples_per_s"] for r in rows if r["dataset"] == name and r["fraction"] == 1.0}
        if "torch" in rate:
            summary.append({"dataset": name, **{f"{b}_vs_torch": rate[b] / rate["torch"] for b in rate if b != "torch"}})
    columns = ["dataset", "backend", "fraction", "samples", "epoch_s", "samples_per_s", "time_vs_full",
               "target", "met"]
    report("loaders" + (f"-{args.tag}" if args.tag else ""), rows, columns,
           summary=summary, config=vars(args), torch_threads=torch.get_num_threads())
    for s in summary:
        ratios = ", ".join(f"{k[:-9]} {v:.2f}x" for k, v in s.items() if k.endswith("_vs_torch"))
        print(f"{s['dataset']}: samples/s at fraction 1.0 vs the torch DataLoader ({args.workers} workers "
              f"each): {ratios}")


if __name__ == "__main__":
    main()
