"""`kdprune score`: compute one pruning score per training sample and write it as STEM.npy + STEM.json."""
from kdprune.commands.common import add_data_args
from kdprune.registry import SCORE_METHODS


def register(sub):
    p = sub.add_parser("score", help="compute per-sample pruning scores (higher = harder)",
                       description="Compute a pruning score for every training sample and write "
                                   "STEM.npy (float32[N], higher = harder) and STEM.json (provenance).")
    add_data_args(p)
    p.add_argument("--method", required=True, type=str.lower, choices=SCORE_METHODS.names(), metavar="METHOD",
                   help="the score: " + "; ".join(f"{e.name} ({e.help})" for e in SCORE_METHODS))
    p.add_argument("--out", required=True, metavar="STEM", help="output path without extension")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs per seed (default per method: " + ", ".join(
                       f"{e.name} {e.info['epochs']}" for e in SCORE_METHODS if "epochs" in e.info) + "; 0 = at init)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds to average (default 1)")
    p.add_argument("--seed", type=int, default=0, help="first seed (seeds are SEED..SEED+K-1)")
    p.add_argument("--model", default="cnn",
                   help="model the training-based scores train (kdprune.models names, torchvision:/timm: too; default cnn)")
    p.add_argument("--width", type=int, default=32, help="channel width of the built-in models (default 32)")
    p.add_argument("--batch-size", type=int, default=128, help="samples per optimizer step while scoring (default 128)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate of the scoring runs (default 0.05)")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"), help="optimizer of the scoring runs (default sgd)")
    p.add_argument("--device", default="cpu", help="where scoring runs: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--store", default=None, help="teacher store directory (teacher-* methods)")
    p.add_argument("--k", type=int, default=None, help="prototypes: k-means clusters (default: classes)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args):
    import numpy as np

    from kdprune.commands.common import load_from_args
    from kdprune.errors import ConfigError
    from kdprune.scores import save_scores
    from kdprune.train.scoring import compute_score

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    ds = load_from_args(args)
    result = compute_score(args.method, ds, epochs=args.epochs, seeds=range(args.seed, args.seed + args.seeds),
                           model=args.model, width=args.width, batch_size=args.batch_size, lr=args.lr,
                           optimizer=args.optimizer, device=args.device, store=args.store, k=args.k,
                           progress=not args.no_progress)
    save_scores(args.out, result.scores, result.meta)
    s = result.scores
    q = np.quantile(s, [0.0, 0.5, 1.0])
    print(f"{args.method}: {len(s)} scores (min {q[0]:.4g}, median {q[1]:.4g}, max {q[2]:.4g}) in "
          f"{result.meta['wall_time_s']:.1f}s -> {args.out}.npy, {args.out}.json")
    return 0
