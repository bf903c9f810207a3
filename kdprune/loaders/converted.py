"""The manifest every converted dataset carries: which source it was made from (its fingerprint), what
it holds, and the size of each data file, so a loader refuses a missing, truncated or stale conversion
with a message that says how to redo it.

FFCV: ``NAME.beton`` plus ``NAME.beton.json``. DALI: a directory holding ``manifest.json`` and its data
files (``images.npy`` for raw arrays, or ``files.txt``, a DALI file list of ``path sample_id`` lines,
for JPEG folders) and ``labels.npy``.
"""
from __future__ import annotations

import json
import os

from kdprune.errors import DataError

VERSION = 1


def source_info(source) -> dict:
    """What a manifest records about the dataset it was converted from."""
    from kdprune.data.folder import FolderDataset
    info = {"source": source.name, "fingerprint": source.fingerprint, "num_samples": len(source),
            "num_classes": int(source.num_classes)}
    if isinstance(source, FolderDataset):
        info.update(encoding="jpeg", root=source.root)
    else:
        info.update(encoding="raw", image_shape=list(source.image_shape))
    return info


def manifest_path(path: str, fmt: str) -> str:
    return os.path.join(path, "manifest.json") if fmt == "dali" else path + ".json"


def write_manifest(path: str, fmt: str, info: dict, data_files: list[str]) -> dict:
    """Record ``info`` and the sizes of ``data_files`` (relative to the manifest's folder) atomically."""
    where = manifest_path(path, fmt)
    base = os.path.dirname(where)
    manifest = {"format": fmt, "version": VERSION, **info,
                "files": {f: os.path.getsize(os.path.join(base, f)) for f in data_files}}
    tmp = where + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, where)
    return manifest


def read_manifest(path: str, fmt: str, source=None) -> dict:
    """The manifest of the ``fmt`` conversion at ``path``, checked against its data files and, when
    ``source`` (a dataset) is given, against the source's fingerprint."""
    redo = f"run `kdprune convert --format {fmt} --out {path}` on the dataset"
    where = manifest_path(path, fmt)
    if not os.path.exists(where):
        what = "no converted dataset" if not os.path.exists(path) else "no manifest beside the converted data"
        raise DataError(f"{what} at {path} (looked for {where}); {redo}")
    try:
        with open(where) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"{where} is not a readable manifest ({err}); {redo}") from err
    if manifest.get("format") != fmt or manifest.get("version") != VERSION:
        raise DataError(f"{where} describes format {manifest.get('format')!r} version {manifest.get('version')}, "
                        f"not {fmt!r} version {VERSION}; {redo}")
    base = os.path.dirname(where)
    for name, size in manifest["files"].items():
        # a .beton is its own data file, whatever it has been renamed to since
        full = path if fmt == "ffcv" else os.path.join(base, name)
        if not os.path.exists(full):
            raise DataError(f"{full} is missing from the converted dataset at {path}; {redo}")
        if os.path.getsize(full) != size:
            raise DataError(f"{full} has {os.path.getsize(full)} bytes but its manifest says {size}: the file "
                            f"is truncated or was rewritten after conversion; {redo}")
    if source is not None and source.fingerprint != manifest["fingerprint"]:
        raise DataError(f"{path} was converted from dataset {manifest['source']} (fingerprint "
                        f"{manifest['fingerprint']}), not from {source.name} ({source.fingerprint}): it is "
                        f"stale; {redo}")
    return manifest


def check_index_fingerprint(ids, manifest: dict) -> None:
    """An IndexSet made for another dataset is refused (its meta names the dataset's fingerprint)."""
    meta = getattr(ids, "meta", None) or {}
    mine = meta.get("dataset_fingerprint")
    if mine and mine != manifest["fingerprint"]:
        raise DataError(f"this IndexSet was made for dataset {mine}, but the converted data holds "
                        f"{manifest['fingerprint']} ({manifest['source']}); re-run `kdprune prune` on it")
