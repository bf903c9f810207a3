"""Loader throughput on an ImageNet-like workload the script makes itself, and what a pruned epoch costs.

Workload: ``--samples`` JPEGs (default 20,000; quality 90) whose heights and widths are drawn from
``--sizes`` (200-500 px), in ``--classes`` (1000) class folders; training batches of ``--batch-size``
224 px random-resized crops with flips (``--crop``), ``--workers`` (2) workers for every loader.

Loaders, all reading the same images:

- ``torch``: kdprune's torch backend, a DataLoader with ``--workers`` processes over the JPEG folder
  (PIL decode, the replayed crop by grid_sample in the workers);
- ``ffcv-stock``: FFCV's own ``Loader`` with ``RandomResizedCropRGBImageDecoder`` on the same
  ``.beton`` (random order, ``--workers`` threads, output float NCHW as ours): the anchor;
- ``ffcv``: kdprune's FFCV backend on that ``.beton`` (the replayed crop of (seed, view, id));
- ``dali``: kdprune's DALI backend on the file list of the original JPEGs;
- ``ffcv-stock-uint8`` and ``ffcv-uint8``: the same two FFCV loaders handing out uint8 grey levels
  (FFCV stock's bare pipeline; kdprune's ``dtype="uint8"``), which a GPU trainer normalises on the
  device: what their decode threads cost the CPU of a GPU machine. Each ``-uint8`` loader's
  ``vs_ffcv_stock`` is against ``ffcv-stock-uint8``.

Part 1 (``throughput``): samples/s of each loader over ``--measure`` batches after ``--warmup``
batches, the loaders taking turns for ``--rounds`` rounds (median). Part 2 (``fraction``): the epoch
time at f = 0.5 / 0.3 / 0.1 against the full epoch for the kdprune backends in ``--fraction-backends``:
loaders over random subsets take turns, one epoch each per round; the ratio is the median over rounds
of that round's t(f) / t(1), so both epochs of a ratio ran close together on a shared machine.

Targets: kdprune-FFCV >= 0.95 x FFCV stock and >= 2 x the torch DataLoader with the same workers;
epoch time at f <= 1.1 f x the full epoch's. Rows go to ``benchmarks/results/loaders.csv`` (one row
per loader and per (loader, fraction), tagged with machine, versions, date and commit).

    python benchmarks/bench_loaders.py                             # the full workload (long on 2 cores)
    python benchmarks/bench_loaders.py --samples 4000 --classes 100 --rounds 1   # a quick look
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import record, table  # noqa: E402

import kdprune  # noqa: E402
from kdprune.data import Augment  # noqa: E402
from kdprune.data.folder import FolderDataset, write_jpeg_folder  # noqa: E402
from kdprune.errors import DataError  # noqa: E402
from kdprune.loaders import build  # noqa: E402
from kdprune.loaders.converted import read_manifest  # noqa: E402

FRACTIONS = (1.0, 0.5, 0.3, 0.1)


def prepare(args) -> tuple[FolderDataset, dict]:
    """The JPEG folder and its FFCV and DALI conversions, each made once and reused while fresh."""
    os.makedirs(args.work, exist_ok=True)
    stem = f"jpeg{args.samples}-c{args.classes}-{args.sizes[0]}to{args.sizes[1]}"
    root = os.path.join(args.work, stem)
    if not os.path.isdir(root):
        t = time.perf_counter()
        write_jpeg_folder(root + ".tmp", args.samples, num_classes=args.classes, size=tuple(args.sizes), seed=0)
        os.replace(root + ".tmp", root)
        print(f"wrote {args.samples} JPEGs in {time.perf_counter() - t:.0f} s", flush=True)
    folder = FolderDataset(root)
    paths = {}
    for fmt, path in (("ffcv", root + ".beton"), ("dali", root + "_dali")):
        if fmt in args.needs:
            try:
                read_manifest(path, fmt, folder)
            except DataError:
                t = time.perf_counter()
                kdprune.convert(folder, fmt, path, workers=args.workers)
                print(f"converted for {fmt} in {time.perf_counter() - t:.0f} s", flush=True)
            paths[fmt] = path
    return folder, paths


class StockFFCV:
    """FFCV's own loader with its stock random-resized-crop decoder: the anchor."""

    def __init__(self, path: str, args, indices=None, normalise: bool = True):
        from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

        threads = torch.get_num_threads()
        half = np.array([127.5, 127.5, 127.5])  # to [-1, 1], as kdprune's batches
        image = [RandomResizedCropRGBImageDecoder((args.crop, args.crop), scale=(0.35, 1.0)), RandomHorizontalFlip(),
                 *([NormalizeImage(half, half, np.float32)] if normalise else []), ToTensor(), ToTorchImage()]
        self.loader = Loader(path, batch_size=args.batch_size, num_workers=args.workers, order=OrderOption.RANDOM,
                             indices=indices, pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze()]},
                             os_cache=True, drop_last=False)
        torch.set_num_threads(threads)  # FFCV sets torch's global thread count

    def set_epoch(self, epoch):
        pass  # FFCV's loader counts its own epochs

    def __iter__(self):
        for images, _ in self.loader:
            yield images


def make_loader(kind: str, folder, paths: dict, ids, args):
    grey = kind.endswith("-uint8")
    if kind.startswith("ffcv-stock"):
        return StockFFCV(paths["ffcv"], args, indices=None if ids is None else np.sort(ids), normalise=not grey)
    augment = Augment(seed=0, out_size=(args.crop, args.crop))
    backend = kind.removesuffix("-uint8")
    extra = {} if backend == "torch" else {"path": paths[backend]}
    return build(backend, folder, ids, batch_size=args.batch_size, train=True, seed=0, augment=augment,
                 workers=args.workers, dtype="uint8" if grey else "float32", **extra)


def run_batches(loader, epoch: int, limit: int | None = None) -> tuple[int, float]:
    """(samples, seconds) of ``limit`` batches (or the whole epoch) of ``loader``'s epoch ``epoch``."""
    loader.set_epoch(epoch)
    n, t0 = 0, time.perf_counter()
    for k, batch in enumerate(loader):
        x = batch if torch.is_tensor(batch) else batch.x
        n += len(x)
        if limit is not None and k + 1 == limit:
            break
    return n, time.perf_counter() - t0


def throughput(folder, paths, args) -> list[dict]:
    loaders = {kind: make_loader(kind, folder, paths, None, args) for kind in args.backends}
    for loader in loaders.values():  # FFCV compiles, DataLoader workers start, DALI builds its pipeline
        run_batches(loader, 0, args.warmup)
    rates = {kind: [] for kind in loaders}
    for r in range(args.rounds):
        for kind, loader in loaders.items():
            n, s = run_batches(loader, r + 1, args.warmup + args.measure)
            rates[kind].append(n / s)
    rows = []
    for kind, values in rates.items():
        rows.append({"part": "throughput", "backend": kind, "samples_per_s": statistics.median(values),
                     "rounds": json_list(values)})
    base = {row["backend"]: row["samples_per_s"] for row in rows}
    for row in rows:
        stock = "ffcv-stock-uint8" if row["backend"].endswith("-uint8") else "ffcv-stock"
        row["vs_ffcv_stock"] = row["samples_per_s"] / base[stock] if stock in base else None
        row["vs_torch"] = row["samples_per_s"] / base["torch"] if "torch" in base else None
    return rows


def fractions(folder, paths, args) -> list[dict]:
    rng = np.random.default_rng(1)
    n = len(folder)
    subsets = {f: np.sort(rng.choice(n, int(round(f * n)), replace=False)) for f in FRACTIONS}
    rows = []
    for kind in args.fraction_backends:
        loaders = {f: make_loader(kind, folder, paths, ids, args) for f, ids in subsets.items()}
        for loader in loaders.values():
            run_batches(loader, 0, args.warmup)
        times = {f: [] for f in FRACTIONS}
        for r in range(args.rounds):
            for f, loader in loaders.items():
                times[f].append(run_batches(loader, r + 1)[1])
        for f in FRACTIONS:
            ratios = [t / full for t, full in zip(times[f], times[1.0])]
            rows.append({"part": "fraction", "backend": kind, "fraction": f, "epoch_s": statistics.median(times[f]),
                         "ratio": statistics.median(ratios), "ratio_over_f": statistics.median(ratios) / f,
                         "rounds": json_list(times[f])})
        del loaders
    return rows


def json_list(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def load() -> str:
    """The machine's load while this ran (1, 5 and 15 minute averages) and its cores."""
    return f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--sizes", type=int, nargs=2, default=(200, 500), help="range of image heights and widths, px")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=4, help="batches before timing")
    p.add_argument("--measure", type=int, default=40, help="batches timed per round (throughput)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--backends", default="torch,ffcv-stock,ffcv,dali,ffcv-stock-uint8,ffcv-uint8,dali-uint8")
    p.add_argument("--fraction-backends", default="ffcv,dali,torch", help="'' skips the fraction part")
    p.add_argument("--work", default="/tmp/kdprune-bench-loaders", help="where the images and conversions go")
    args = p.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    args.fraction_backends = [b for b in args.fraction_backends.split(",") if b]
    kinds = set(args.backends) | set(args.fraction_backends)
    args.needs = {"ffcv" if k.startswith("ffcv") else k.removesuffix("-uint8") for k in kinds} - {"torch"}
    folder, paths = prepare(args)
    load_before = load()
    rows = throughput(folder, paths, args) if args.backends else []
    print(table(rows, ["backend", "samples_per_s", "vs_ffcv_stock", "vs_torch"]), flush=True)
    frows = fractions(folder, paths, args)
    print(table(frows, ["backend", "fraction", "epoch_s", "ratio", "ratio_over_f"]))
    config = {k: v for k, v in vars(args).items() if k != "needs"}
    config["load"] = f"before {load_before}; after {load()}"
    path = record("loaders", rows + frows, **config)
    print(f"\nload (1/5/15 min) before: {load_before}; after: {load()}\nappended {len(rows + frows)} rows to {path}")


if __name__ == "__main__":
    main()
