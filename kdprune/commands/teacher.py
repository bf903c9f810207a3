"""`kdprune teacher`: train the full-data teacher (every training sample, cross-entropy only) and save
it as OUT/model.pt (+ model.pt.json) for `kdprune logits`."""
from __future__ import annotations

from kdprune.commands.train import add_config_args, add_source_args


def register(sub):
    p = sub.add_parser("teacher", help="train the teacher on all training samples (CE only)",
                       description="Train a model on ALL training samples with cross-entropy (alpha = 0) "
                                   "and save OUT/model.pt + model.pt.json, which `kdprune logits` reads. "
                                   "Runs under torchrun for DDP.")
    add_source_args(p)
    p.add_argument("--out", metavar="DIR", required=True, help="output directory (model.pt, metrics.json)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt if it exists")
    p.add_argument("--timing", action="store_true", help="split the step time into its phases")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_config_args(p, skip=("alpha", "temperature", "teacher"))
    p.set_defaults(func=run)


def run(args) -> int:
    from kdprune.commands.train import _train, config_from_args, load_sources

    cfg = config_from_args(args, alpha=0.0)
    train_set, test_set = load_sources(args)
    code = _train(cfg, train_set, test_set, None, store=None, keep_fraction=1.0, args=args, desc="teacher")
    return code
