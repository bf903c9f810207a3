"""Cost of each pruning score relative to one training epoch of the same model.

Claim measured: the training-dynamics scores (EL2N, forgetting, AUM) cost the training run they ride
on plus bookkeeping; teacher-based scores cost a pass over the store; GraNd's exact per-sample
gradients cost several epochs, its last-layer form a forward pass.

    .venv/bin/python benchmarks/bench_scores.py                 # Fashion-MNIST, width-16 CNN
    .venv/bin/python benchmarks/bench_scores.py --samples 6000  # a quicker subset

Every score uses a budget of ``--epochs`` training epochs where it trains (dynamics: recorded during
them; GraNd / prototypes: trained first, then scored; 0 = at initialisation). Times are wall seconds
in one process, one run each (the epoch itself is the median of ``--repeat`` runs), so they carry the
noise of a shared machine; the ratio column is score time / one plain training epoch.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import report  # noqa: E402


def epoch_time(ds, args) -> float:
    """Median wall time of one plain CE training epoch (a fresh model each time)."""
    from kdprune.loaders import build
    from kdprune.loss import KDLoss
    from kdprune.models import build_model
    from kdprune.train import fit

    times = []
    for r in range(args.repeat):
        torch.manual_seed(r)
        model = build_model("cnn", ds.num_classes, ds.image_shape[2], width=args.width)
        loader = build("torch", ds, np.arange(len(ds)), batch_size=args.batch_size, train=True, seed=r)
        t0 = time.perf_counter()
        fit(model, loader, epochs=1, lr=0.05, loss_fn=KDLoss(alpha=0.0, temperature=1.0), progress=False)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def make_store(ds, path: str, width: int) -> str:
    """A dense fp16 store of an (untrained) model's logits: its content does not change the cost."""
    from kdprune.data import to_float
    from kdprune.models import build_model
    from kdprune.store import TeacherStore

    torch.manual_seed(0)
    model = build_model("cnn", ds.num_classes, ds.image_shape[2], width=width).eval()
    with TeacherStore.create(path, len(ds), ds.num_classes, dataset_fingerprint=ds.fingerprint) as w, \
            torch.no_grad():
        for start in range(0, len(ds), 2048):
            ids = torch.arange(start, min(start + 2048, len(ds)))
            w.write(ids, model(to_float(ds.images[ids.numpy()])))
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--samples", type=int, default=None, help="use the first N training samples")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1, help="training budget of the training-based scores")
    p.add_argument("--repeat", type=int, default=2, help="runs of the plain epoch (median)")
    p.add_argument("--methods", default="random,el2n,forgetting,aum,grand-last,grand,prototypes,"
                                        "teacher-el2n,teacher-entropy,teacher-margin")
    args = p.parse_args(argv)

    from kdprune.data import ArrayDataset, load_dataset
    from kdprune.scores import compute_score

    ds = load_dataset(args.dataset, "train")
    if args.samples:
        ds = ArrayDataset(ds.name, ds.images[: args.samples], ds.labels[: args.samples], ds.num_classes)
    epoch = epoch_time(ds, args)
    print(f"{ds.name}: {len(ds)} samples, cnn width {args.width}, batch {args.batch_size}: "
          f"one training epoch {epoch:.2f}s")
    rows = [{"method": "train 1 epoch (reference)", "budget_epochs": 1, "seconds": epoch, "x_epoch": 1.0}]
    with tempfile.TemporaryDirectory() as tmp:
        store = None
        for method in args.methods.split(","):
            if method.startswith("teacher-") and store is None:
                store = make_store(ds, os.path.join(tmp, "store"), args.width)
            trains = method not in ("random",) and not method.startswith("teacher-")
            result = compute_score(method, ds, epochs=args.epochs if trains else None, seeds=1,
                                   width=args.width, batch_size=args.batch_size, store=store)
            sec = result.meta["wall_time_s"]
            rows.append({"method": method, "budget_epochs": args.epochs if trains else 0, "seconds": sec,
                         "x_epoch": sec / epoch, "extra_x_epoch": sec / epoch - (args.epochs if trains else 0)})
            print(f"  {method}: {sec:.2f}s = {sec / epoch:.3g} epochs", flush=True)
    report("scores", rows, ["method", "budget_epochs", "seconds", "x_epoch", "extra_x_epoch"],
           dataset=ds.name, num_samples=len(ds), width=args.width, batch_size=args.batch_size,
           epoch_seconds=epoch)


if __name__ == "__main__":
    main()
