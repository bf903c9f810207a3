"""`kdprune reproduce`: teacher, alpha study, pruning grid and teacher-capacity study, with tables and plots."""


def register(sub):
    p = sub.add_parser(
        "reproduce", help="reproduce the paper's findings on Fashion-MNIST (tables, plots, results.csv)",
        description="Run (or resume) the reproduction: a teacher on all the data, the alpha study and its "
                    "fitted alpha_for_fraction rule, every pruning method at every keep fraction without and "
                    "with KD, and the teacher-capacity study. Finished runs are never recomputed.")
    p.add_argument("--preset", default="reduced", choices=("full", "reduced", "demo", "tiny"),
                   help="size: full (the whole grid, ~75 min on 2 CPU cores), reduced (an end-to-end check), "
                        "demo (what `make demo` runs), tiny (synthetic data, for tests); default reduced")
    p.add_argument("--out", default=None, help="output directory (default runs/reproduce/PRESET)")
    p.add_argument("--data-dir", default=None,
                   help="Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available; default)")
    p.add_argument("--jobs", type=int, default=1,
                   help="student runs trained at once in separate processes, torch threads split between "
                        "them (small models on a few CPU cores: use --jobs 2; on a GPU keep 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of this process (default: torch's); --jobs splits them between the "
                        "workers. On a shared CPU, 1 thread per process is much faster for these small models")
    p.add_argument("--write-alpha-fit", action="store_true",
                   help="copy the fitted alpha rule to kdprune/loss/alpha_fit.json (what alpha='auto' uses)")
    p.add_argument("--copy-to", default=None, metavar="DIR",
                   help="also copy results.md, results.csv, alpha_fit.json and the plots to DIR (e.g. docs/results)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args):
    import os

    from kdprune.reproduce import reproduce
    from kdprune.reproduce.publish import copy_results, install_alpha_fit

    out = args.out or os.path.join("runs", "reproduce", args.preset)
    if args.threads is not None:
        import torch

        from kdprune.errors import ConfigError
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)  # asked for on the command line, for this process only
    summary = reproduce(args.preset, out, data_dir=args.data_dir, device=args.device,
                        progress=not args.no_progress, jobs=args.jobs)
    with open(os.path.join(out, "results.md")) as f:
        print(f.read())
    if args.write_alpha_fit:
        print(f"[reproduce] alpha rule written to {install_alpha_fit(out)}")
    if args.copy_to:
        print(f"[reproduce] copied {', '.join(copy_results(out, args.copy_to))} to {args.copy_to}")
    print(f"[reproduce] results: {out}/results.md, {out}/results.csv")
    return 0 if summary["runs_finished"] == summary["runs_planned"] else 1
