"""One check for every place two artefacts meet: dataset -> teacher (model.pt.json) -> store ->
scores -> subset -> run. Each artefact records the fingerprint (and the name) of the dataset it was
made from; :func:`require_same` compares two of them and stops with both names and the fix."""
from __future__ import annotations

from typing import NamedTuple

from kdprune.errors import ProvenanceError


class DatasetId(NamedTuple):
    """What an artefact says about its dataset: a content fingerprint and a readable name."""

    fingerprint: str | None
    name: str | None = None

    def __str__(self) -> str:
        fp = f"fingerprint {self.fingerprint[:16]}" if self.fingerprint else "no fingerprint"
        return f"dataset {self.name} ({fp})" if self.name else f"an unnamed dataset ({fp})"


def dataset_id(source) -> DatasetId:
    """The :class:`DatasetId` of ``source``: a dataset (``.fingerprint``, ``.name``), a metadata dict
    (keys ``dataset_fingerprint`` and ``dataset``/``dataset_name``), an object with such a ``.meta``
    (a TeacherStore, an IndexSet, a ScoreFile), a ``(fingerprint, name)`` pair, a fingerprint string
    or None."""
    if source is None or isinstance(source, DatasetId):
        return source or DatasetId(None)
    if isinstance(source, str):
        return DatasetId(source)
    if isinstance(source, tuple):
        return DatasetId(*source)
    meta = source if isinstance(source, dict) else getattr(source, "meta", None)
    if isinstance(meta, dict):
        name = meta.get("dataset_name") or meta.get("dataset")
        return DatasetId(meta.get("dataset_fingerprint"), name if isinstance(name, str) else None)
    return DatasetId(getattr(source, "fingerprint", None) or None, getattr(source, "name", None))


def require_same(made_for, used_with, *, what: str, fix: str, missing_ok: bool = True) -> None:
    """Raise :class:`~kdprune.errors.ProvenanceError` when ``what`` (an artefact, described in words,
    e.g. "the teacher store runs/logits") was made for another dataset than the one it is used with.

    ``made_for`` and ``used_with`` are anything :func:`dataset_id` reads. ``fix`` says what to do
    (e.g. "recompute it with `kdprune logits --dataset ...`"). Where either side records no
    fingerprint there is nothing to compare: that passes unless ``missing_ok`` is False."""
    have, want = dataset_id(made_for), dataset_id(used_with)
    if have.fingerprint and want.fingerprint:
        if have.fingerprint != want.fingerprint:
            raise ProvenanceError(f"{what} was made from {have}, but it is used with {want}; {fix}")
    elif not missing_ok:
        raise ProvenanceError(f"{what} records no dataset fingerprint, so it cannot be checked against "
                              f"{want}; {fix}")


def dataset_flags(name: str | None) -> str:
    """The `kdprune` flags that load the dataset called ``name`` (as kdprune's loaders name them), or
    ``--dataset ...`` when the name does not say."""
    import re

    if not name:
        return "--dataset ..."
    m = re.fullmatch(r"synthetic-(\d+)x\d+-.*", name)
    if m:
        return f"--dataset synthetic --synthetic-samples {m.group(1)}"
    if name.startswith("folder:"):
        return "--dataset folder --data-dir ROOT"
    base = name.split("/")[0]
    return f"--dataset {base}" + ("" if base == "fashion-mnist" else " --data-dir DIR")


def check_model(model_path, dataset, *, what: str = "the teacher") -> None:
    """Stop when the model saved at ``model_path`` (its ``model.pt.json``) was trained on another
    dataset than ``dataset``; the error names both and the flags that load the model's dataset."""
    import json
    import os

    spec_path = os.fspath(model_path) + ".json"
    if not os.path.exists(spec_path):
        return
    with open(spec_path) as f:
        spec = json.load(f)
    made = dataset_id(spec)
    require_same(made, dataset, what=f"{what} {os.fspath(model_path)}",
                 fix=f"use the dataset it was trained on ({dataset_flags(made.name)}), or train a teacher on "
                     "this dataset with `kdprune teacher`")
