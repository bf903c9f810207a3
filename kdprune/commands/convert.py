"""`kdprune convert --format ffcv|dali`: write a dataset in the form the FFCV or DALI loader reads,
with a manifest recording the source's fingerprint (a conversion of other data is refused as stale).
The Python call is :func:`kdprune.convert`."""


def register(sub):
    from kdprune.commands.common import add_data_args
    p = sub.add_parser("convert", help="convert a dataset for the ffcv or dali loader backend",
                       description="Writes an FFCV .beton (image, label and sample-id fields; JPEGs kept at "
                                   "their own size) or a DALI directory (a file list of the original JPEGs, or "
                                   "images.npy for in-memory datasets) plus a manifest with the source "
                                   "dataset's fingerprint.")
    p.add_argument("--format", required=True, choices=("ffcv", "dali"), help="which loader backend reads it")
    add_data_args(p)
    p.add_argument("--split", default="train", choices=("train", "val", "test"),
                   help="which split to convert (val and test name the same one; default train)")
    p.add_argument("--out", required=True, help="output: NAME.beton for ffcv, a directory for dali")
    p.add_argument("--workers", type=int, default=2, help="writer processes (ffcv; default 2)")
    p.set_defaults(func=run)


def run(args):
    from kdprune.commands.common import load_from_args
    from kdprune.loaders.converted import convert

    split = "train" if args.split == "train" else "test"
    source = load_from_args(args, split)
    manifest = convert(source, args.format, args.out, workers=args.workers)
    print(f"wrote {args.out}: {manifest['num_samples']} samples of {manifest['source']} "
          f"(fingerprint {manifest['fingerprint']}, {manifest['encoding']})")
    return 0
