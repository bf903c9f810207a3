"""`kdprune data`: load and validate a dataset, print its size, classes and fingerprint."""
from kdprune.commands.common import add_data_args


def register(sub):
    p = sub.add_parser("data", help="validate a dataset and print its summary and fingerprint")
    add_data_args(p)
    p.add_argument("--split", default="train", choices=("train", "test"), help="which split (default train)")
    p.set_defaults(func=run)


def run(args):
    import numpy as np

    from kdprune.commands.common import load_from_args

    ds = load_from_args(args, args.split)
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    print(f"{ds.name}: {len(ds)} samples, image {ds.image_shape}, {ds.num_classes} classes, "
          f"fingerprint {ds.fingerprint}")
    print("per class: " + ", ".join(f"{(ds.classes[i] if ds.classes else i)}={c}" for i, c in enumerate(counts)))
    return 0
