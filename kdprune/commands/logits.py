"""`kdprune logits`: run a teacher checkpoint over the training set and write its teacher store."""
import os

from kdprune.commands.common import add_data_args
from kdprune.registry import LOADER_BACKENDS


def register(sub):
    p = sub.add_parser("logits", help="teacher checkpoint -> teacher-logit store (resumable)",
                       description="Compute the teacher's logits for every training sample (and each of "
                                   "--views augmented views) into a memory-mapped store. Re-running the "
                                   "same command after an interruption resumes it.")
    add_data_args(p)
    p.add_argument("--split", default="train", choices=("train", "test"),
                   help="which split's samples to run the teacher on (default train)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (model.pt with model.pt.json)")
    p.add_argument("--out", required=True, help="store directory to write")
    p.add_argument("--views", type=int, default=1, help="augmented views per sample (default 1)")
    p.add_argument("--augment", action="store_true",
                   help="augment even with one view (views > 1 always augment)")
    p.add_argument("--augment-seed", type=int, default=0, help="seed of the deterministic augmentation")
    p.add_argument("--image-size", type=int, default=0,
                   help="side in pixels of the teacher's input: images are resized and centre-cropped to it, views "
                        "cropped to it (default 0: each image's own size; images of varied sizes need one)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                   help="how the logits are stored (default float16: 2 bytes a logit)")
    p.add_argument("--topk", type=int, default=None, help="keep only the k largest logits per sample")
    p.add_argument("--batch-size", type=int, default=512, help="samples per teacher forward pass (default 512)")
    p.add_argument("--workers", type=int, default=2,
                   help="processes (torch) or threads (ffcv, dali) that decode the images and crop the views while "
                        "the teacher runs (default 2; 0 decodes in the main process with torch)")
    p.add_argument("--loader", default="torch", choices=LOADER_BACKENDS.names(),
                   help="loader backend that decodes the images and crops the views (default torch); ffcv and "
                        "dali read --converted")
    p.add_argument("--converted", metavar="PATH", default=None,
                   help="the split converted for --loader ffcv/dali (`kdprune convert --format ffcv|dali`)")
    p.add_argument("--device", default="cpu", help="where the teacher runs: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args):
    from kdprune.commands.common import load_from_args
    from kdprune.data import Augment
    from kdprune.errors import ConfigError
    from kdprune.models import load_model
    from kdprune.provenance import check_model
    from kdprune.logits import write_teacher_logits
    from kdprune.store.fill import checkpoint_description
    from kdprune.train.distributed import is_main, setup

    if args.views < 1:
        raise ConfigError(f"--views must be >= 1, got {args.views}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    dataset = load_from_args(args, args.split)
    if args.split == "train":
        check_model(args.teacher, dataset)  # a teacher's logits on its own training set, or an error
    model = load_model(args.teacher)
    size = (args.image_size, args.image_size) if args.image_size else None
    augment = Augment(seed=args.augment_seed, out_size=size) if (args.views > 1 or args.augment) else None
    finished = os.path.exists(args.out)  # a published store: checked against these arguments, not redone
    device = setup(args.device)  # under torchrun the ranks share the batches; rank 0 writes the store
    store = write_teacher_logits(model, dataset, args.out, views=args.views, augment=augment, image_size=size,
                                 batch_size=args.batch_size, dtype=args.dtype, topk=args.topk,
                                 workers=args.workers, loader=args.loader, converted=args.converted, device=device,
                                 description=checkpoint_description(args.teacher), progress=not args.no_progress)
    if is_main():
        if finished:
            print(f"kdprune: {args.out} is already complete; nothing to compute")
        print(f"{store}: dataset {dataset.name} ({dataset.fingerprint})")
    return 0
