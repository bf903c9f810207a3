"""`kdprune convert --format ffcv|dali`: write a dataset in the form the FFCV or DALI loader reads,
with a manifest recording the source's fingerprint (a conversion of other data is refused as stale)."""


def register(sub):
    from kdprune.catalog import DATASETS
    p = sub.add_parser("convert", help="convert a dataset for the ffcv or dali loader backend",
                       description="Writes an FFCV .beton (image, label and sample-id fields) or a DALI "
                                   "directory (images.npy, or a file list of the JPEGs) plus a manifest "
                                   "with the source dataset's fingerprint.")
    p.add_argument("--format", required=True, choices=("ffcv", "dali"))
    p.add_argument("--dataset", default="fashion-mnist", choices=(*DATASETS, "folder"),
                   help="'folder': a folder of JPEG images by class, given with --data-dir")
    p.add_argument("--data-dir", default=None, help="dataset folder (for 'folder': ROOT/<class>/*.jpg)")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--synthetic-samples", type=int, default=2000, help="size of --dataset synthetic")
    p.add_argument("--out", required=True, help="output: NAME.beton for ffcv, a directory for dali")
    p.add_argument("--workers", type=int, default=2, help="writer processes (ffcv)")
    p.set_defaults(func=run)


def load_source(dataset: str, split: str, data_dir, synthetic_samples: int):
    """The dataset to convert: a JPEG folder, or any dataset ``kdprune.data.load_dataset`` reads."""
    from kdprune.errors import DataError
    if dataset == "folder":
        from kdprune.data.folder import FolderDataset
        if not data_dir:
            raise DataError("--dataset folder needs --data-dir ROOT (a folder with one sub-folder of JPEGs per class)")
        return FolderDataset(data_dir)
    from kdprune.data import load_dataset
    return load_dataset(dataset, split, data_dir, num_samples=synthetic_samples)


def run(args):
    source = load_source(args.dataset, args.split, args.data_dir, args.synthetic_samples)
    if args.format == "ffcv":
        from kdprune.loaders import require_backend
        from kdprune.loaders.ffcv_backend import write_beton
        require_backend("ffcv")
        manifest = write_beton(source, args.out, workers=args.workers)
    else:
        from kdprune.loaders.dali_backend import write_dali
        manifest = write_dali(source, args.out)
    print(f"wrote {args.out}: {manifest['num_samples']} samples of {manifest['source']} "
          f"(fingerprint {manifest['fingerprint']}, {manifest['encoding']})")
    return 0
