"""`kdprune teacher`: train the full-data teacher (every training sample, cross-entropy only) and save
it as OUT/model.pt (+ model.pt.json) for `kdprune logits`."""
from __future__ import annotations

from kdprune.commands.train import add_config_args, add_out_args, add_source_args


def register(sub):
    p = sub.add_parser("teacher", help="train the teacher on all training samples (CE only)",
                       description="Train a model on ALL training samples with cross-entropy (alpha = 0) "
                                   "and save OUT/model.pt + model.pt.json, which `kdprune logits` reads. "
                                   "Runs under torchrun for DDP.")
    add_source_args(p)
    p.add_argument("--out", metavar="DIR", required=True, help="output directory (model.pt, metrics.json)")
    add_out_args(p)
    p.add_argument("--timing", action="store_true",
                   help="split the step time into data, forward, loss, backward+step (syncs the device)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_config_args(p, skip=("alpha", "temperature", "teacher"))
    p.set_defaults(func=run)


def run(args) -> int:
    from kdprune.commands.train import check_out, config_from_args, load_sources, run_training

    cfg = config_from_args(args, alpha=0.0)
    if not check_out(args):
        return 0
    train_set, test_set = load_sources(args)
    return run_training(cfg, train_set, test_set, None, store=None, keep_fraction=1.0, args=args, desc="teacher")
