"""Arguments several commands share, so each means the same everywhere."""
from kdprune.catalog import DATASETS


def add_data_args(p):
    p.add_argument("--dataset", default="fashion-mnist", type=str.lower, choices=(*DATASETS, "folder"),
                   help="dataset (default fashion-mnist); 'folder': JPEG folders by class, --data-dir ROOT holding ROOT/train/<class>/*.jpg "
                        "and ROOT/val/<class>/*.jpg (the ImageNet layout)")
    p.add_argument("--data-dir", default=None,
                   help="dataset folder (Fashion-MNIST default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--synthetic-samples", type=int, default=2000,
                   help="training-set size of --dataset synthetic (default 2000; the test set is a sixth)")


def load_from_args(args, split="train"):
    if args.dataset == "folder":
        from kdprune.data.folder import load_folder_split
        from kdprune.errors import DataError
        if not args.data_dir:
            raise DataError("--dataset folder needs --data-dir ROOT holding ROOT/train/<class>/*.jpg and "
                            "ROOT/val/<class>/*.jpg")
        return load_folder_split(args.data_dir, split)
    from kdprune.data import load_dataset
    return load_dataset(args.dataset, split, args.data_dir, num_samples=args.synthetic_samples)
