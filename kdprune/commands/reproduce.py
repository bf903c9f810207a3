"""`kdprune reproduce`: the paper's findings on Fashion-MNIST (self-distillation, every pruning method and
RS2 with and without KD, alpha per method family, teacher capacity, time to accuracy), with tables and plots."""

PRESET_HELP = ("full (the study, about 90 min with --jobs 2 --threads 1 on 2 CPU cores: see --estimate), "
               "demo (what `make demo` runs: a few minutes), tiny (synthetic data, for tests)")


def register(sub):
    p = sub.add_parser(
        "reproduce", help="reproduce the paper's findings on Fashion-MNIST (tables, plots, results.csv)",
        description="Run (or resume) the reproduction: a self-distillation teacher and the capacity-study "
                    "teachers, the pruning scores, the alpha sweep per method family, every pruning method and "
                    "RS2 at every keep fraction without and with KD, the fixed-steps control, the convergence "
                    "check and the time-to-accuracy runs. Finished runs are never recomputed.")
    p.add_argument("--preset", default="demo", choices=("full", "demo", "tiny"), help=PRESET_HELP + "; default demo")
    p.add_argument("--out", default=None, help="output directory (default runs/reproduce/PRESET)")
    p.add_argument("--data-dir", default=None,
                   help="Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available; default)")
    p.add_argument("--jobs", type=int, default=1,
                   help="teachers, scores and student runs trained at once in separate processes, torch threads "
                        "split between them (small models on a few CPU cores: use --jobs 2; on a GPU keep 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of this process (default: torch's); --jobs splits them between the "
                        "workers")
    p.add_argument("--estimate", action="store_true",
                   help="measure this machine's training and evaluation rates (under a minute) and print what "
                        "the preset would cost, without running it")
    p.add_argument("--write-alpha-fit", action="store_true",
                   help="print where the alpha rule this run fitted is (RUN/alpha_fit.json) and how to ship it "
                        "(the installed package is never changed)")
    p.add_argument("--copy-to", default=None, metavar="DIR",
                   help="also copy results.md, results.csv, alpha_fit.json and the plots to DIR (e.g. docs/results)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def _print_estimate(args) -> int:
    from kdprune.data import load_dataset
    from kdprune.reproduce import PRESETS
    from kdprune.reproduce.estimate import estimate, measure_rates

    p = PRESETS[args.preset]
    kw = {"num_samples": p.synthetic_samples, "shape": tuple(p.synthetic_shape)}
    train, test = (load_dataset(p.dataset, split, args.data_dir, **kw) for split in ("train", "test"))
    import torch
    threads = max(1, torch.get_num_threads() // max(1, args.jobs))
    rates = measure_rates(p, train, test, threads=threads)
    est = estimate(p, rates, len(train), len(test), jobs=args.jobs)
    per = ", ".join(f"width {w}: {1e6 * s:.0f} us" for w, s in rates["train"].items())
    print(f"[reproduce] measured at {threads} torch thread(s): training {per} per sample; KD from a store "
          f"+{1e6 * rates['kd']:.0f} us per sample; GraNd {1e3 * rates['grand']:.1f} ms per sample")
    for kind, s in est["seconds"].items():
        if kind != "runs":
            print(f"[reproduce]   {kind}: {s / 60:.1f} job-min")
    phases = ", ".join(f"{k} {max(v['sum'] / args.jobs, v['longest']) / 60:.1f}" for k, v in est["phases"].items())
    print(f"[reproduce] preset {p.name}: {est['student_runs']} student runs, {est['job_seconds'] / 60:.1f} job-min, "
          f"about {est['wall_s'] / 60:.0f} min with --jobs {args.jobs} (phases, min: {phases}; process start "
          "not included)")
    return 0


def run(args):
    import os

    from kdprune.errors import ConfigError
    from kdprune.reproduce import reproduce
    from kdprune.reproduce.publish import copy_results, fitted_alpha_rule

    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)  # asked for on the command line, for this process only
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    if args.estimate:
        return _print_estimate(args)
    out = args.out or os.path.join("runs", "reproduce", args.preset)
    summary = reproduce(args.preset, out, data_dir=args.data_dir, device=args.device,
                        progress=not args.no_progress, jobs=args.jobs)
    with open(os.path.join(out, "results.md")) as f:
        print(f.read())
    if args.write_alpha_fit:
        path = fitted_alpha_rule(out)
        print(f"[reproduce] alpha rule fitted by this run: {path}\n[reproduce] to ship it, copy it to "
              "kdprune/loss/alpha_fit.json in a source checkout and commit it")
    if args.copy_to:
        print(f"[reproduce] copied {', '.join(copy_results(out, args.copy_to))} to {args.copy_to}")
    print(f"[reproduce] results: {out}/results.md, {out}/results.csv")
    return 0 if summary["runs_finished"] == summary["runs_planned"] else 1
