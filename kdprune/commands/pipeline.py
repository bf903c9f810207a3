"""`kdprune pipeline`: the whole slice (teacher, logits, random subset, students, report) in one go."""
from kdprune.commands.common import add_data_args


def register(sub):
    p = sub.add_parser("pipeline", help="teacher -> logits store -> random subset -> students -> report",
                       description="Run (or resume) the whole pipeline and write runs/<name>/report.md.")
    p.add_argument("--name", default="demo", help="run name: artefacts go to RUNS_DIR/NAME (default demo)")
    p.add_argument("--runs-dir", default="runs", help="folder holding the runs (default runs)")
    add_data_args(p)
    p.add_argument("--fraction", type=float, default=0.3, help="keep fraction f in (0, 1] (default 0.3)")
    p.add_argument("--teacher-epochs", type=int, default=3, help="teacher training epochs (default 3)")
    p.add_argument("--teacher-width", type=int, default=16, help="teacher model width (channels; default 16)")
    p.add_argument("--epochs", type=int, default=3, help="student epochs (same at every fraction)")
    p.add_argument("--width", type=int, default=8, help="student model width (channels; default 8)")
    p.add_argument("--alpha", default="auto", help="KD weight in [0, 1], or 'auto' (default)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature T (default 4)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per optimizer step (default 64)")
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate of the one-cycle schedule (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the models and the random subset (default 0)")
    p.add_argument("--augment", action="store_true",
                   help="random-resized-crop augmentation for the students (off by default: the store "
                        "holds the teacher's logits on the clean images)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args):
    from kdprune.pipeline import PipelineConfig, run_pipeline
    from kdprune.train.config import TrainConfig

    alpha = args.alpha if args.alpha == "auto" else float(args.alpha)
    common = {"batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "augment": args.augment}
    cfg = PipelineConfig(
        name=args.name, runs_dir=args.runs_dir, dataset=args.dataset, data_dir=args.data_dir,
        synthetic_samples=args.synthetic_samples, fraction=args.fraction, kd_alpha=alpha,
        temperature=args.temperature,
        teacher=TrainConfig(width=args.teacher_width, epochs=args.teacher_epochs, **common),
        student=TrainConfig(width=args.width, epochs=args.epochs, **common))
    summary = run_pipeline(cfg, progress=not args.no_progress)
    print()
    with open(f"{cfg.out_dir}/report.md") as f:
        print(f.read())
    print(f"[kdprune] report: {cfg.out_dir}/report.md  metrics: {cfg.out_dir}/metrics.json")
    return 0 if summary else 1
