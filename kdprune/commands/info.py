"""`kdprune info STORE`: print a teacher store's header and verify every checksum."""


def register(sub):
    p = sub.add_parser("info", help="summarise a teacher store and verify its checksums",
                       description="Print a teacher store's header summary and verify every chunk "
                                   "checksum. Exit 0 when the store is intact, 2 when it is not.")
    p.add_argument("store", help="teacher store directory (made by `kdprune logits`)")
    p.add_argument("--no-verify", action="store_true", help="only the cheap checks (header, file sizes)")
    p.set_defaults(func=run)


def run(args):
    import json

    from kdprune.store import TeacherStore

    store = TeacherStore.open(args.store)
    meta = store.meta
    lay = store.layout
    layout = f"top-{lay.k} (missing classes read as {meta['fill_value']:g})" if lay.k else "dense"
    print(f"teacher store {store.path}")
    print(f"  format        {meta['format']} v{meta['version']}")
    print(f"  samples       {lay.num_samples}")
    print(f"  classes       {lay.num_classes}")
    print(f"  views         {lay.views}")
    print(f"  dtype         {lay.dtype}, {layout}")
    print(f"  chunks        {lay.num_chunks} per view of {lay.chunk_rows} samples (crc32)")
    print(f"  dataset       {meta.get('dataset') or '(unnamed)'}, fingerprint {meta.get('dataset_fingerprint')}")
    print(f"  teacher       {json.dumps(meta.get('teacher'))}")
    print(f"  augment       {json.dumps(meta.get('augment'))}")
    if args.no_verify:
        return 0
    summary = store.verify()  # raises StoreError (exit 2) naming the damaged rows
    print(f"  verified      {summary['chunks']} chunks, {summary['bytes']} bytes: OK")
    return 0
