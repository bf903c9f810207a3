"""Cost of each pruning score relative to one training epoch of the same model.

Claim measured: the training-dynamics scores (EL2N, forgetting, AUM) cost the training run they ride
on plus a small bookkeeping overhead; teacher-based scores cost a pass over the store; GraNd's exact
per-sample gradients cost a few epochs' worth, its last-layer form and the prototypes about a forward
pass.

    .venv/bin/python benchmarks/bench_scores.py --samples 10000   # Fashion-MNIST subset, width-16 CNN

Each score = its training budget (``--epochs`` epochs for the scores that train a model; the
dynamics are recorded during them) + its own extra work, measured separately:
- dynamics: the recorder's ``on_batch`` time inside a real 1-epoch ``fit`` (timed around each call);
- GraNd / GraNd-last / prototypes: the scoring pass over the whole set with the trained model;
- teacher-*: the pass over a dense fp16 store of the same size; random: drawing the numbers.
Times are CPU seconds of this process (``time.process_time``) at ``--threads`` torch threads (1 by
default, so CPU time is the work done): on a shared machine wall time swings with the other processes'
load. Each pass is the median of ``--repeat`` runs. All costs are linear in N, so a subset gives the
same ratios as the full set.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import report  # noqa: E402


def cpu_median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return float(np.median(times))


class Timed:
    """Wraps a recorder and adds up the CPU time of its ``on_batch`` calls."""

    def __init__(self, rec):
        self.rec, self.cpu = rec, 0.0

    def on_batch(self, *args):
        c0 = time.process_time()
        self.rec.on_batch(*args)
        self.cpu += time.process_time() - c0


def train_epoch(ds, args, seed: int, callbacks=()):
    """A fresh width-``args.width`` CNN trained one epoch (CE only) with ``callbacks``; returns it."""
    from kdprune.loaders import build
    from kdprune.loss import KDLoss
    from kdprune.models import build_model
    from kdprune.train import fit

    torch.manual_seed(seed)
    model = build_model("cnn", ds.num_classes, ds.image_shape[2], width=args.width)
    loader = build("torch", ds, np.arange(len(ds)), batch_size=args.batch_size, train=True, seed=seed)
    fit(model, loader, epochs=1, lr=0.05, loss_fn=KDLoss(alpha=0.0, temperature=1.0), callbacks=callbacks,
        progress=False)
    return model


def make_store(ds, model, path: str):
    """A dense fp16 store of ``model``'s logits (their values do not change the cost of a pass)."""
    from kdprune.data import to_float
    from kdprune.store import TeacherStore

    with TeacherStore.create(path, len(ds), ds.num_classes, dataset_fingerprint=ds.fingerprint) as w, \
            torch.no_grad():
        for start in range(0, len(ds), 2048):
            ids = torch.arange(start, min(start + 2048, len(ds)))
            w.write(ids, model.eval()(to_float(ds.images[ids.numpy()])))
    return TeacherStore.open(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--samples", type=int, default=None, help="use the first N training samples")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1, help="training budget of the scores that train")
    p.add_argument("--repeat", type=int, default=3, help="runs of each timed pass (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly for the run)")
    args = p.parse_args(argv)

    from kdprune.data import ArrayDataset, load_dataset
    from kdprune.scores.dynamics import AUMRecorder, EL2NRecorder, ForgettingRecorder
    from kdprune.scores.grand import grand_last_layer, grand_scores
    from kdprune.scores.prototypes import embed_all, prototype_scores
    from kdprune.scores.teacher import teacher_scores

    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, "train")
    if args.samples:
        ds = ArrayDataset(ds.name, ds.images[: args.samples], ds.labels[: args.samples], ds.num_classes)
    n, e = len(ds), args.epochs
    train_epoch(ds, args, 99)  # warm-up: the first fit in a process pays one-time imports
    epoch = cpu_median(lambda: train_epoch(ds, args, 0), args.repeat)
    print(f"{ds.name}: {n} samples, cnn width {args.width}, batch {args.batch_size}, {args.threads} "
          f"thread(s): one training epoch {epoch:.2f} CPU s", flush=True)

    extra = {}
    recs = {"el2n": Timed(EL2NRecorder(n, epoch=0)), "forgetting": Timed(ForgettingRecorder(n)),
            "aum": Timed(AUMRecorder(n))}
    model = train_epoch(ds, args, 1, callbacks=tuple(recs.values()))
    for name, t in recs.items():
        c0 = time.process_time()
        t.rec.finalize()
        extra[name] = t.cpu + time.process_time() - c0
    extra["grand"] = cpu_median(lambda: grand_scores(model, ds.images, ds.labels), args.repeat)
    extra["grand-last"] = cpu_median(lambda: grand_last_layer(model, ds.images, ds.labels), args.repeat)
    extra["prototypes"] = cpu_median(
        lambda: prototype_scores(embed_all(model, ds.images), ds.num_classes, seed=0), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(ds, model, os.path.join(tmp, "store"))
        for kind in ("el2n", "entropy", "margin"):
            extra[f"teacher-{kind}"] = cpu_median(lambda: teacher_scores(store, ds.labels, kind), args.repeat)
        store.close()
    extra["random"] = cpu_median(lambda: np.random.default_rng(0).random(n).astype(np.float32), args.repeat)

    rows = [{"method": "one training epoch (reference)", "train_epochs": 1, "extra_cpu_s": 0.0,
             "extra_x_epoch": 0.0, "total_x_epoch": 1.0}]
    for name, sec in extra.items():
        budget = 0 if name == "random" or name.startswith("teacher-") else e
        rows.append({"method": name, "train_epochs": budget, "extra_cpu_s": sec, "extra_x_epoch": sec / epoch,
                     "total_x_epoch": budget + sec / epoch})
    report("scores", rows, ["method", "train_epochs", "extra_cpu_s", "extra_x_epoch", "total_x_epoch"],
           dataset=ds.name, num_samples=n, width=args.width, batch_size=args.batch_size, threads=args.threads,
           epoch_cpu_seconds=epoch)


if __name__ == "__main__":
    main()
