"""`kdprune prune`: turn a score file (or nothing, for random) into an IndexSet STEM.npy + STEM.json."""
from kdprune.commands.common import add_data_args
from kdprune.registry import PRUNE_MODES


def register(sub):
    p = sub.add_parser("prune", help="choose the kept subset (an IndexSet) from scores or at random",
                       description="Keep round(f * N) samples: the hardest or easiest by a score file, "
                                   "CCS-stratified, or at random; write STEM.npy (sorted ids) + STEM.json.")
    add_data_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scores", metavar="STEM", help="a score file from `kdprune score`")
    src.add_argument("--random", action="store_true", help="random subset (no scores)")
    p.add_argument("--fraction", type=float, required=True, help="keep fraction f in (0, 1]")
    p.add_argument("--mode", default=None, type=str.lower, choices=PRUNE_MODES.names(),
                   help="which samples to keep (default: hardest with --scores, random with --random)")
    p.add_argument("--class-balanced", action="store_true", help="equal share per class (within one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice and of tie-breaks (default 0)")
    p.add_argument("--beta", type=float, default=None,
                   help="ccs: hard cut-off fraction (default: the CCS paper's value for the fraction)")
    p.add_argument("--strata", type=int, default=50, help="ccs: number of score strata (default 50)")
    p.add_argument("--out", required=True, metavar="STEM",
                   help="output path without extension (STEM.npy + STEM.json; an existing one is replaced)")
    p.set_defaults(func=run)


def run(args):
    import numpy as np

    from kdprune.commands.common import load_from_args
    from kdprune.errors import ConfigError
    from kdprune.selection import check_fraction, prune

    fraction = check_fraction(args.fraction)  # fail before loading anything
    mode = args.mode or ("random" if args.random else "hardest")
    if args.random and mode != "random":
        raise ConfigError(f"--mode {mode} needs --scores STEM; --random keeps a random subset")
    ds = load_from_args(args)
    scores, method = None, "random"
    if args.scores:
        from kdprune.scores import load_scores
        from kdprune.provenance import require_same
        scores = load_scores(args.scores)
        require_same(scores.meta, ds, what=f"the score file {args.scores}",
                     fix=f"compute the scores on this dataset with `kdprune score --method {scores.meta.get('method', '...')} "
                         "--dataset ...`, or prune the scores' dataset")
        scores = load_scores(args.scores, expect_fingerprint=ds.fingerprint, expect_num_samples=len(ds))
        method = f"{scores.meta.get('method', 'scores')}-{mode}"
    index = prune(scores, fraction, mode=mode, labels=ds.labels, class_balanced=args.class_balanced,
                  seed=args.seed, dataset_fingerprint=ds.fingerprint, method=method,
                  beta=args.beta, strata=args.strata)
    index.meta["dataset"] = ds.name
    if args.scores:
        index.meta["scores"] = args.scores
    index.save(args.out)
    per_class = np.bincount(ds.labels[index.ids], minlength=ds.num_classes)
    print(f"kept {len(index)} of {len(ds)} ({method}, f={fraction}); per class min {per_class.min()} "
          f"max {per_class.max()} -> {args.out}.npy, {args.out}.json")
    return 0
