"""The manifest every converted dataset carries: which source it was made from (its fingerprint), what
it holds, and the size of each data file, so a loader refuses a missing, truncated or stale conversion
with a message that says how to redo it.

FFCV: ``NAME.beton`` plus ``NAME.beton.json``. DALI: a directory holding ``manifest.json`` and its data
files (``images.npy`` for raw arrays, or ``files.txt``, a DALI file list of ``path sample_id`` lines
naming the original JPEGs, for JPEG folders) and ``labels.npy``. Images keep their own sizes in both.

:func:`convert` is ``kdprune.convert``, what ``kdprune convert`` runs.
"""
from __future__ import annotations

import json
import os

import numpy as np

from kdprune.errors import DataError

VERSION = 1


def convert(dataset, format: str, path, *, workers: int = 2) -> dict:
    """Write ``dataset`` at ``path`` in the form the ``"ffcv"`` or ``"dali"`` loader backend reads,
    with a manifest recording the dataset's fingerprint (a conversion of other data is refused as
    stale); returns the manifest. Images keep their own sizes: FFCV stores each JPEG at its own size
    (up to the writer's ``max_resolution``), DALI lists the original files.

    ``dataset``: kdprune's JPEG folder or in-memory dataset, or a dataset that lists its image files
    (torchvision's ``ImageFolder``). ``path``: a ``NAME.beton`` file for FFCV, a directory for DALI.

    >>> import kdprune, tempfile, os
    >>> data = kdprune.load_dataset("synthetic", num_samples=40)
    >>> out = os.path.join(tempfile.mkdtemp(), "train_dali")
    >>> kdprune.convert(data, "dali", out)["num_samples"]
    40
    """
    from kdprune.loaders import require_backend
    path = os.fspath(path)
    if format == "dali":
        from kdprune.loaders.dali_backend import write_dali
        return write_dali(dataset, path)
    if format == "ffcv":
        require_backend("ffcv")
        from kdprune.loaders.ffcv_backend import write_beton
        return write_beton(dataset, path, workers=workers)
    raise DataError(f"unknown conversion format {format!r}; choose 'ffcv' or 'dali'")


def source_info(source) -> dict:
    """What a manifest records about the dataset it was converted from."""
    from kdprune.dropin import dataset_name, fingerprint
    labels = source_labels(source)
    num_classes = getattr(source, "num_classes", None)
    if num_classes is None:
        classes = getattr(source, "classes", None)
        num_classes = len(classes) if classes else int(labels.max()) + 1
    info = {"source": dataset_name(source), "fingerprint": fingerprint(source), "num_samples": len(source),
            "num_classes": int(num_classes)}
    if file_list(source) is not None:
        info.update(encoding="jpeg", root=getattr(source, "root", None))
    else:
        shape = getattr(source, "image_shape", None)
        info.update(encoding="raw", image_shape=list(shape) if shape is not None and not callable(shape) else None)
    return info


def source_labels(source) -> np.ndarray:
    """The labels of every sample of ``source`` (read from its attributes, or item by item)."""
    from kdprune.dropin import dataset_labels
    labels = dataset_labels(source)
    if labels is None:
        labels = [int(source[i][1]) for i in range(len(source))]
    return np.asarray(labels, dtype=np.int64)


def file_list(source) -> list[str] | None:
    """The image file of each sample, for a dataset that lists them (kdprune's JPEG folder: ``.paths``;
    torchvision's ``ImageFolder``: ``.samples``), else None."""
    if isinstance(getattr(source, "paths", None), list):
        return [os.path.abspath(p) for p in source.paths]
    samples = getattr(source, "samples", None)
    if isinstance(samples, list) and samples and isinstance(samples[0], tuple):
        return [os.path.abspath(p) for p, _ in samples]
    return None


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
    if source is not None:
        from kdprune.dropin import dataset_name, fingerprint
        mine = fingerprint(source)
        if mine != manifest["fingerprint"]:
            raise DataError(f"{path} was converted from dataset {manifest['source']} (fingerprint "
                            f"{manifest['fingerprint']}), not from {dataset_name(source)} ({mine}): it is "
                            f"stale; {redo}")
    return manifest


def check_index_fingerprint(ids, manifest: dict) -> None:
    """An IndexSet made for another dataset is refused (its meta names the dataset's fingerprint)."""
    from kdprune.loaders.batch import check_subset
    check_subset(ids, manifest["fingerprint"], manifest["source"])
