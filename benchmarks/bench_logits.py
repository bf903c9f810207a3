"""Teacher logits on an ImageNet-like JPEG folder: teacher inputs (sample views) per second of
``write_teacher_logits`` (what ``kdprune logits`` runs) through each decode path, against decoding in
the writing process.

Workload: the JPEG folder ``bench_loaders.py`` makes (``--samples`` JPEGs, default 2,000, of 200-500 px
in 1000 classes, and its FFCV and DALI conversions), ``--views`` augmented 224 px views per image
(default 2), batches of ``--batch-size`` (256).

Decode paths: ``torch-main`` (``--workers 0``: PIL in the writing process, the baseline), ``torch``
(``--workers`` DataLoader processes over the folder), ``ffcv`` (FFCV's threads on the .beton) and
``dali`` (DALI's threads on the file list), each with ``--workers`` (2).

Teacher: ``--teacher pool`` (default: average pooling and a linear layer, next to free, so the figure
is the decode path's, as on a GPU where the teacher's forward is the small part), or any
``kdprune.build_model`` name (``cnn``, ``torchvision:resnet18``) to see a CPU-bound teacher.

Each path writes two fresh stores per round, of 1 and of 1 + ``--views`` views, the paths taking turns
for ``--rounds`` rounds. A row gives the median steady rate, ``inputs_per_s`` (teacher inputs, i.e.
samples x views, per second: the extra views over the extra time, so start-up cancels out), its ratio
to ``torch-main``, and ``startup_s`` (the one-view store's time beyond its inputs at that rate:
worker start, FFCV's compile, DALI's pipeline), paid once per command; each path writes one store
untimed first, so compiling that happens once per process is left out. Rows go to
``benchmarks/results/logits.csv``.

    python benchmarks/bench_logits.py
    python benchmarks/bench_logits.py --teacher torchvision:resnet18 --samples 500 --rounds 1
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_loaders import json_list, load, prepare  # noqa: E402
from harness import record, table  # noqa: E402

import kdprune  # noqa: E402
from kdprune.data import Augment  # noqa: E402

PATHS = ("torch-main", "torch", "ffcv", "dali")


def make_teacher(name: str, num_classes: int) -> torch.nn.Module:
    if name == "pool":
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                   torch.nn.Linear(48, num_classes))
    return kdprune.build_model(name, num_classes, 3)


def write_once(path_kind: str, teacher, folder, paths: dict, args, out: str, views: int) -> float:
    """Seconds to write the store of every sample and ``views`` views through ``path_kind``."""
    backend = path_kind.removesuffix("-main")
    where = {"loader": backend, "converted": paths[backend]} if backend != "torch" else {}
    workers = 0 if path_kind == "torch-main" else args.workers
    t0 = time.perf_counter()
    kdprune.write_teacher_logits(teacher, folder, out, views=views, augment=Augment(seed=0, out_size=(224, 224)),
                                 image_size=(224, 224), batch_size=args.batch_size, workers=workers,
                                 progress=False, **where)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--sizes", type=int, nargs=2, default=(200, 500), help="range of image heights and widths, px")
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--teacher", default="pool", help="pool (near free: the decode is timed) or a build_model name")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", default="/tmp/kdprune-bench-loaders", help="where the images and conversions go")
    args = p.parse_args(argv)
    args.paths = [k for k in args.paths.split(",") if k]
    args.needs = {k for k in args.paths if k in ("ffcv", "dali")}
    folder, paths = prepare(args)
    torch.manual_seed(0)
    teacher = make_teacher(args.teacher, folder.num_classes).eval()
    load_before = load()
    rates, startups = {k: [] for k in args.paths}, {k: [] for k in args.paths}
    scratch = tempfile.mkdtemp(prefix="kdprune-bench-logits-")
    n = len(folder)
    try:
        for kind in args.paths:  # once untimed: numba's and FFCV's first compile in this process
            write_once(kind, teacher, folder, paths, args, os.path.join(scratch, f"{kind}-warmup"), 1)
        for r in range(args.rounds):
            for kind in args.paths:
                t = {}
                for views in (1, 1 + args.views):
                    out = os.path.join(scratch, f"{kind}-{r}-{views}")
                    t[views] = write_once(kind, teacher, folder, paths, args, out, views)
                    shutil.rmtree(out)
                rate = n * args.views / (t[1 + args.views] - t[1])
                rates[kind].append(rate)
                startups[kind].append(t[1] - n / rate)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rate = {k: statistics.median(v) for k, v in rates.items()}
    rows = [{"path": kind, "inputs_per_s": rate[kind], "startup_s": statistics.median(startups[kind]),
             "vs_torch_main": rate[kind] / rate["torch-main"] if "torch-main" in rate else None,
             "rounds": json_list(rates[kind])} for kind in args.paths]
    print(table(rows, ["path", "inputs_per_s", "startup_s", "vs_torch_main"]))
    config = {k: v for k, v in vars(args).items() if k != "needs"}
    config["load"] = f"before {load_before}; after {load()}"
    out = record("logits", rows, **config)
    print(f"\nload (1/5/15 min) before: {load_before}; after: {load()}\nappended {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
