"""Where an epoch's time goes: a fixed cost per epoch and a cost per batch, for each loader backend.

A target on epoch time at fraction f (within 1.15 x f of the full epoch's) is a statement about the
fixed cost: with K full-epoch batches of cost c and a fixed cost a per epoch, the
f = 0.1 epoch takes (a + 0.1 K c) / (a + K c) of the full one. ``bench_loaders.py`` measures that
ratio directly, and on a shared 2-core box it moves with the noise; this script measures a and c.

Loaders over k = ``--batches`` batches of random kept ids (same data, settings and augmentation as
``bench_loaders.py``) take turns for ``--rounds`` epochs each; a least-squares line through the
median epoch times gives T(k) = a + k c. Also printed: the first batch's median latency (against c,
it shows what an epoch pays before the pipeline is full) and the f = 0.1 ratio the fit predicts for
the whole dataset.

    python benchmarks/bench_epoch_cost.py                              # both datasets, every backend
    python benchmarks/bench_epoch_cost.py --datasets jpeg-folder --backends ffcv,dali
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its siblings, in a checkout or installed

from bench_loaders import prepare, time_fractions  # noqa: E402
from harness import report  # noqa: E402
from kdprune.data import Augment  # noqa: E402
from kdprune.loaders import build  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,2,4,8,16", help="epoch lengths, in batches")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--backends", default="torch,ffcv,dali")
    p.add_argument("--datasets", default="fashion-mnist,jpeg-folder")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--jpeg-samples", type=int, default=20000)
    p.add_argument("--jpeg-size", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--work", default="/tmp/kdprune-bench-loaders", help="shared with bench_loaders.py")
    p.add_argument("--tag", default="", help="a label for this run, kept in its rows' config")
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    sources, paths = prepare(args)
    counts = [int(k) for k in args.batches.split(",")]
    rows = []
    for name in args.datasets.split(","):
        source, b = sources[name], args.batch_size
        augment = None if name == "fashion-mnist" else Augment(seed=0, out_size=(args.crop, args.crop))
        for backend in args.backends.split(","):
            extra = {} if backend == "torch" else {"path": paths[name, backend]}
            loaders = {k: build(backend, source, np.sort(np.random.default_rng(k).choice(len(source), k * b, replace=False)),
                                batch_size=b, train=True, seed=0, augment=augment, views=4,
                                workers=args.workers, **extra) for k in counts}
            times, firsts = time_fractions(loaders, args.rounds)
            total = {k: statistics.median(t) for k, t in times.items()}
            first = {k: statistics.median(t) for k, t in firsts.items()}
            per_batch, fixed = (float(v) for v in np.polyfit(counts, [total[k] for k in counts], 1))
            full = len(source) / b
            rows.append({"dataset": name, "backend": backend, "fixed_ms": fixed * 1e3,
                         "per_batch_ms": per_batch * 1e3, "first_batch_ms": statistics.median(first.values()) * 1e3,
                         "predicted_f0.1": (fixed + 0.1 * full * per_batch) / (fixed + full * per_batch),
                         "epoch_ms": {k: total[k] * 1e3 for k in counts}})
            print(rows[-1], flush=True)
            del loaders
    report("epoch_cost", rows, ["dataset", "backend", "fixed_ms", "per_batch_ms", "first_batch_ms", "predicted_f0.1"],
           **vars(args))


if __name__ == "__main__":
    main()
