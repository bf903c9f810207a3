"""`kdprune train`: train a student on a pruned subset, distilling a teacher store (or an online teacher).

Single process: ``kdprune train --subset kept --store logits/ --alpha 0.7 --out runs/s1``.
Many GPUs: ``torchrun --nproc_per_node=8 -m kdprune train --device cuda ...`` (``--batch-size`` is
the global batch). Every TrainConfig option is a flag (``--amp bf16``, ``--grad-accum 2``, ...);
``--config FILE.json`` loads a config file whose values the flags override.
"""
from __future__ import annotations

import argparse
import dataclasses

from kdprune.commands.common import add_data_args

# flag help for the options whose name alone does not say enough
_HELP = {
    "batch_size": "global batch per optimizer step (split over ranks and accumulation steps); `kdprune pipeline` "
                  "and the demo train with 64 at --lr 0.2, tuned for 3-epoch students (docs/design.md)",
    "lr": "peak learning rate; 0.05 suits longer runs at batch 128, while `kdprune pipeline` and the demo use "
          "0.2 at batch 64, the best of a sweep of 3-epoch Fashion-MNIST students (docs/design.md)",
    "loss_kernel": "implementation of the fused KD loss: auto (triton on CUDA, cpu with the C++ extension, "
                   "else torch), triton, cpu or torch",
    "alpha": "weight of the distillation term in [0, 1], or 'auto' (from the keep fraction and the subset's "
             "pruning method: score-pruned subsets get more at small f); "
             "unset: 'auto' when the run has a teacher (--store / --teacher-model), 0 without one",
    "augment": "random-resized-crop augmentation; unset: replay the --store's views (as `kdprune logits` "
               "made them), on without a store",
    "checkpoint_minutes": "minutes between checkpoints inside an epoch, so Ctrl-C or a crash loses little "
                          "(0: only --checkpoint-every and epoch ends)",
    "temperature": "distillation temperature T > 0",
    "amp": "autocast dtype: none, bf16 or fp16 (fp16 adds a GradScaler)",
    "compile": "torch.compile the model: true/false or a backend (inductor, aot_eager)",
    "ema": "EMA decay per optimizer step (e.g. 0.9999); 0 = off; the saved model is the EMA",
    "teacher": "store: logits from --store; online: --teacher-model run on each batch",
    "schedule": "LR schedule over all optimizer steps: onecycle, cosine, step, constant",
    "warmup": "fraction of the steps spent warming up",
    "milestones": "step schedule: fractions of the run where the LR is multiplied by --gamma",
    "model": "cnn, resnet20/32/56, torchvision:NAME (e.g. torchvision:resnet50) or timm:NAME",
    "norm": "normalisation of kdprune's models: batch, group or none",
    "image_size": "side in px of the training crops, and of evaluation's resize + centre crop (0: the input size; images of varied sizes need one; with a store, the store's size)",
    "checkpoint_every": "optimizer steps between mid-epoch checkpoints (0: at epoch ends)",
    "log_every": "optimizer steps between metrics.jsonl step records (0: epochs only)",
    "eval_every": "epochs between test evaluations (0: after the last only)",
    "width": "channels of the first layer of kdprune's models (they double per stage)",
    "epochs": "passes over the kept subset (the same at every keep fraction)",
    "optimizer": "sgd (with Nesterov momentum) or adamw",
    "momentum": "SGD momentum (AdamW: beta1)",
    "weight_decay": "L2 weight decay (decoupled for AdamW)",
    "gamma": "step schedule: LR factor at each milestone",
    "max_grad_norm": "clip the gradient's global L2 norm to this (0: no clipping)",
    "label_smoothing": "label smoothing of the cross-entropy term, in [0, 1)",
    "seed": "seed of the initial weights, the sample order and the augmentation",
    "device": "cpu, cuda or cuda:N (under torchrun each rank takes its local GPU)",
    "channels_last": "channels-last memory format for the model and the batches (faster convs on GPUs)",
    "grad_accum": "micro-batches per optimizer step (the global batch is split over them)",
    "sync_bn": "synchronise BatchNorm statistics over the DDP ranks",
    "loader": "data loader backend: torch, ffcv or dali (ffcv/dali read --train-data)",
    "workers": "decoding processes/threads of folder, FFCV and DALI loaders",
    "eval_batch_size": "samples per evaluation batch",
    "rs2": "RS2: train each epoch on a fresh random FRACTION of the data, without replacement across epochs "
           "(0 = off; not with --subset; with --store and no --alpha, alpha is 'auto' at FRACTION)",
}


def _bool_or_backend(text: str):
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    return text


def add_config_args(p, skip=()) -> None:
    """One flag per :class:`TrainConfig` field (``--grad-accum``, ``--amp``, ...), default None, so
    only what the user typed overrides the config file or the defaults."""
    from kdprune.train import config as c
    from kdprune.train.config import TrainConfig

    choices = {"optimizer": ("sgd", "adamw"), "schedule": c.SCHEDULES, "amp": c.AMP, "norm": c.NORMS,
               "teacher": c.TEACHERS, "loader": c.LOADERS, "loss_kernel": c.KERNELS}
    defaults = TrainConfig()
    g = p.add_argument_group("training options (TrainConfig)")
    g.add_argument("--config", metavar="FILE.json", help="a TrainConfig JSON file (flags override it)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_ = f"{_HELP.get(f.name, f.name.replace('_', ' '))} (default {'unset' if default is None else repr(default)})"
        if f.name == "compile":
            g.add_argument(flag, type=_bool_or_backend, nargs="?", const=True, default=None, help=help_)
        elif isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif isinstance(default, list):
            g.add_argument(flag, type=float, nargs="+", default=None, help=help_)
        elif f.name == "alpha":
            g.add_argument(flag, default=None, help=help_)
        elif f.name in choices:  # names are case-insensitive
            g.add_argument(flag, type=str.lower, default=None, choices=choices[f.name], help=help_)
        elif default is None:  # augment: on, off or unset
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            g.add_argument(flag, type=type(default), default=None, help=help_)
    g.add_argument("--loss-backend", dest="loss_kernel", default=None, choices=c.KERNELS,
                   help=argparse.SUPPRESS)  # the old name of --loss-kernel


def config_from_args(args, **fixed):
    """The validated TrainConfig of ``--config`` + flags + ``fixed`` (which the command imposes)."""
    from kdprune.train.config import TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    given.update(fixed)
    if args.config:
        return TrainConfig.load(args.config, **given)
    return TrainConfig.from_dict(given)


def add_source_args(p) -> None:
    add_data_args(p)
    p.add_argument("--train-data", metavar="PATH", default=None,
                   help="converted training set read by --loader ffcv/dali (a .beton or a DALI directory)")
    p.add_argument("--val-data", metavar="PATH", default=None,
                   help="converted test set for --loader ffcv/dali (default: read the test set with torch)")


def load_sources(args):
    """(train set, test set) of ``--dataset`` (``folder``: ROOT/train and ROOT/val of ``--data-dir``)."""
    from kdprune.commands.common import load_from_args
    return load_from_args(args, "train"), load_from_args(args, "test")


def add_out_args(p) -> None:
    """--resume / --overwrite: what to do with an --out that holds a run already."""
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out from its checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds a finished or unfinished run (deletes its "
                        "checkpoint and metrics)")
    p.set_defaults(resume_flag="--resume")


def check_out(args) -> bool:
    """Before anything is loaded: False when --out holds a finished run (said so; nothing to do); an
    error when it holds an unfinished one and neither --resume nor --overwrite was given."""
    import json
    import os

    from kdprune.errors import ConfigError
    from kdprune.train.checkpoint import FILENAME, METRICS, describe, run_state

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite starts it over: pass one")
    state = run_state(args.out)
    if state == "finished" and not args.overwrite:
        with open(os.path.join(args.out, METRICS)) as f:
            acc = json.load(f).get("test_accuracy", float("nan"))
        print(f"{args.out} holds a finished run (test accuracy {acc:.4f}, see {args.out}/{METRICS}); "
              "nothing to do (pass --overwrite to train again)")
        return False
    if state == "partial" and not (args.resume or args.overwrite):
        where = describe(os.path.join(args.out, FILENAME))
        raise ConfigError(f"{args.out} holds an unfinished run (checkpoint at {where or 'an unreadable point'}); "
                          "pass --resume to continue it, or --overwrite to start over")
    return True


def register(sub):
    p = sub.add_parser("train", help="train a student on a pruned subset with KD from a teacher store",
                       description="Train a student on the samples of --subset (all when omitted), "
                                   "distilling the teacher logits of --store (alpha 'auto' unless --alpha "
                                   "says otherwise) on exactly the views the store holds. Writes model.pt, "
                                   "metrics.json, metrics.jsonl, checkpoint.pt and el2n.npy to --out. "
                                   "Runs under torchrun for DDP.")
    add_source_args(p)
    p.add_argument("--subset", metavar="STEM", default=None, help="IndexSet from `kdprune prune` (default: all)")
    p.add_argument("--store", metavar="DIR", default=None, help="teacher store from `kdprune logits`")
    p.add_argument("--teacher-model", metavar="PATH", default=None,
                   help="a model.pt from `kdprune teacher`, run online on each batch (what --teacher online "
                        "uses; without --store it turns --teacher online on)")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    add_out_args(p)
    p.add_argument("--timing", action="store_true",
                   help="split the step time into data, teacher, forward, loss, backward+step (syncs the device)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from kdprune.errors import DataError

    cfg = config_from_args(args)  # a bad option fails before any data is read
    if not check_out(args):
        return 0
    if cfg.rs2 and args.subset:
        from kdprune.errors import ConfigError
        raise ConfigError(f"--rs2 {cfg.rs2} draws each epoch's subset from the whole dataset; drop --subset "
                          "(or drop --rs2 to train on the fixed subset)")
    train_set, test_set = load_sources(args)
    ids, fraction = None, None
    if args.subset:
        from kdprune.selection import IndexSet
        subset = IndexSet.load(args.subset).check_dataset(len(train_set), train_set.fingerprint,
                                                          name=train_set.name)
        ids, fraction = subset.ids, subset.meta.get("fraction")
        if len(ids) == 0:
            raise DataError(f"{args.subset} keeps no samples; prune with a larger fraction")
    store = None
    if args.store:
        from kdprune.store import TeacherStore
        store = TeacherStore.open(args.store, expect_fingerprint=train_set)
    return run_training(cfg, train_set, test_set, ids, store=store, keep_fraction=fraction, args=args)


def run_training(cfg, train_set, test_set, ids, *, store, keep_fraction, args, desc="train") -> int:
    """Train through :func:`kdprune.train.train_run` with the command's --out/--resume/--overwrite and
    print the one summary line (accuracy, alpha used, steps, time)."""
    from kdprune.train import distributed as dist
    from kdprune.train.run import train_run

    try:
        _, metrics = train_run(cfg, train_set, test_set, ids, store=store, keep_fraction=keep_fraction,
                               out_dir=args.out, progress=not args.no_progress, desc=desc,
                               teacher_model=getattr(args, "teacher_model", None), resume=args.resume,
                               overwrite=args.overwrite,
                               timing=args.timing, sources=(args.train_data, args.val_data))
        if dist.is_main():
            alpha = metrics["config"]["alpha"]
            how = "" if alpha == 0 else (f" (auto at keep fraction {metrics['keep_fraction']:.3g}, the "
                                          f"{metrics['alpha_family']} rule)" if cfg.alpha in (None, "auto") else "")
            print(f"{desc}: test accuracy {metrics['test_accuracy']:.4f}, alpha {alpha:.3g}{how}, "
                  f"after {metrics['steps']} steps "
                  f"({metrics['samples_seen']} samples, {metrics['wall_time_s']:.1f}s, "
                  f"{metrics['world_size']} process(es)) -> {args.out}")
            if "timing" in metrics:
                t = metrics["timing"]
                print("step time (ms): " + ", ".join(f"{k[:-3]} {v:.2f}" for k, v in t.items() if k.endswith("_ms")))
    finally:
        if dist.is_initialized():
            dist.barrier()
            import torch.distributed
            torch.distributed.destroy_process_group()
    return 0
