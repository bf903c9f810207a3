"""The on-disk format of a teacher store (version 1), shared by the writer and the reader.

A store is a directory::

    STORE/header.json   versioned JSON header (see docs/store-format.md)
    STORE/values.bin    [views, num_samples, width] little-endian, C order; width = num_classes (dense)
                        or k (top-k: the k largest logits of each row, in descending order)
    STORE/indices.bin   top-k only: int32 [views, num_samples, k], the class of each kept value

Each ``.bin`` file starts at offset 0, so a memory map of it is page-aligned. Rows are checksummed in
chunks of ``chunk_rows`` samples per view (crc32), listed in the header; the header checksums itself.
This module owns the format: the header (its keys, its checks, its atomic write) and the chunk
checksums; the writer and the reader both use it and neither imports the other.
"""
from __future__ import annotations

import json
import math
import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from kdprune.atomic import atomic_open
from kdprune.errors import StoreError

FORMAT = "kdprune.teacher-store"
VERSION = 1
HEADER = "header.json"
VALUES = "values.bin"
INDICES = "indices.bin"
# Missing classes of a top-k row read back as this logit. With kept logits of ordinary size (|z| < 100)
# softmax gives them exp((FILL - max_kept) / T) < 1e-40 for any temperature T <= 100 (exactly 0 in fp32
# for T <= 20), yet the value is finite in fp16 and bf16, so log_softmax and the KL term stay finite
# (a -inf fill would make 0 * inf = NaN in the KL term).
TOPK_FILL = -1.0e4
# Checksum granularity: about 4 MiB of one file per chunk, so resume loses little and verify can run
# chunks in parallel, while the header stays small (~650 chunks per view for ImageNet-1k fp16).
CHUNK_BYTES = 1 << 22
# ... and at most this many rows, so a store of narrow rows (10 classes: 4 MiB = 200k rows) still
# commits its progress every few thousand rows and an interrupted writer loses little
MAX_CHUNK_ROWS = 8192

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# numpy has no bfloat16: its raw bits are moved as uint16
NP_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int32": np.int32}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4}

# the arguments of create() that must match for a partial store to be resumed
PARAM_KEYS = ("num_samples", "num_classes", "views", "dtype", "layout", "k", "chunk_rows",
              "dataset_fingerprint", "teacher", "augment", "input_size")


@dataclass(frozen=True)
class Layout:
    """Shapes and sizes implied by a header."""

    num_samples: int
    num_classes: int
    views: int
    dtype: str
    k: int | None
    chunk_rows: int

    @property
    def width(self) -> int:
        return self.k if self.k is not None else self.num_classes

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_samples / self.chunk_rows)

    def files(self) -> dict[str, str]:
        """file key -> element dtype name"""
        return {"values": self.dtype} if self.k is None else {"values": self.dtype, "indices": "int32"}

    def shape(self) -> tuple[int, int, int]:
        return (self.views, self.num_samples, self.width)

    def file_bytes(self, key: str) -> int:
        return self.views * self.num_samples * self.width * ITEMSIZE[self.files()[key]]

    def row_bytes(self, key: str) -> int:
        return self.width * ITEMSIZE[self.files()[key]]

    def chunk_span(self, key: str, view: int, chunk: int) -> tuple[int, int]:
        """(byte offset, byte length) of chunk ``chunk`` of view ``view`` in file ``key``."""
        start = chunk * self.chunk_rows
        stop = min(start + self.chunk_rows, self.num_samples)
        rb = self.row_bytes(key)
        return (view * self.num_samples + start) * rb, (stop - start) * rb


def default_chunk_rows(width: int, itemsize: int) -> int:
    return max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // (width * itemsize)))


def file_name(key: str) -> str:
    return {"values": VALUES, "indices": INDICES}[key]


def layout_of(header: dict) -> Layout:
    return Layout(int(header["num_samples"]), int(header["num_classes"]), int(header["views"]),
                  header["dtype"], header["k"], int(header["chunk_rows"]))


def canonical(header: dict) -> bytes:
    """The bytes ``header_crc32`` is computed over: the header without that key, keys sorted,
    separators ``,`` and ``:``, ASCII."""
    body = {k: v for k, v in header.items() if k != "header_crc32"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def dump_header(path, header: dict) -> None:
    """Write ``header`` (adding its self-checksum) to ``path`` atomically and durably."""
    header = dict(header, header_crc32=zlib.crc32(canonical(header)))
    with atomic_open(path) as f:
        json.dump(header, f, indent=1, sort_keys=True)


def load_header(directory) -> dict:
    """Read and validate ``directory/header.json``: format, version, self-checksum, required keys."""
    directory = os.fspath(directory)
    path = os.path.join(directory, HEADER)
    if not os.path.isdir(directory):
        raise StoreError(f"teacher store {directory} not found; create it with `kdprune logits` "
                         "(or TeacherStore.create)")
    if not os.path.isfile(path):
        hint = (" (a partial store exists next to it: re-run the command that wrote it to finish it)"
                if os.path.isdir(directory.rstrip("/") + ".partial") else "")
        raise StoreError(f"{path} is missing: {directory} is not a teacher store{hint}")
    try:
        with open(path, "rb") as f:
            header = json.loads(f.read().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{path} is not valid JSON ({err}): the store header is corrupted; "
                         "re-create the store with `kdprune logits`") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StoreError(f"{path} is not a {FORMAT} header; is {directory} a teacher store?")
    if header.get("version") != VERSION:
        raise StoreError(f"{directory} is a teacher store of format version {header.get('version')}, but this "
                         f"kdprune reads version {VERSION}; re-create it with this version's `kdprune logits` "
                         "or use the kdprune that wrote it")
    if header.get("header_crc32") != zlib.crc32(canonical(header)):
        raise StoreError(f"{path} fails its checksum (header_crc32): the header was modified or corrupted; "
                         "re-create the store with `kdprune logits`")
    check_params(header, where=path)
    return header


def check_params(h: dict, where: str) -> None:
    """Check that the parameters in a header (or given to create) are consistent."""
    def bad(msg):
        raise StoreError(f"{where}: {msg}")

    def positive(key):
        if not isinstance(h.get(key), int) or isinstance(h.get(key), bool) or h[key] < 1:
            bad(f"{key} must be a positive integer, got {h.get(key)!r}")

    for key in ("num_samples", "num_classes", "views"):
        positive(key)
    if h.get("dtype") not in DTYPES:
        bad(f"dtype must be one of {', '.join(DTYPES)}, got {h.get('dtype')!r}")
    if h.get("layout") == "dense":
        if h.get("k") is not None:
            bad(f"a dense store has k = null, got {h.get('k')!r}")
    elif h.get("layout") == "topk":
        k = h.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < h["num_classes"]:
            bad(f"top-k needs 1 <= k < num_classes = {h['num_classes']}, got k = {k!r}; "
                "use topk=None for a dense store")
    else:
        bad(f"layout must be 'dense' or 'topk', got {h.get('layout')!r}")
    positive("chunk_rows")
    if sys.byteorder != "little":
        bad("teacher stores are little-endian and this machine is big-endian")


def check_files(directory: str, layout: Layout) -> None:
    """Cheap structural check: every array file exists with exactly the size the header implies."""
    for key in layout.files():
        path = os.path.join(directory, file_name(key))
        if not os.path.isfile(path):
            raise StoreError(f"{path} is missing: the teacher store is incomplete; re-create it with "
                             "`kdprune logits`")
        size, want = os.path.getsize(path), layout.file_bytes(key)
        if size != want:
            what = "truncated" if size < want else "longer than its header says"
            raise StoreError(f"{path} is {what} ({size} bytes, the header implies {want} = "
                             f"{layout.views} views x {layout.num_samples} samples x {layout.row_bytes(key)} "
                             "bytes): the store is damaged; re-create it with `kdprune logits`")


def crc_chunks(buffers: dict, layout: Layout, todo: list[tuple[int, int]]) -> dict:
    """crc32 of each (view, chunk) in ``todo`` for every file: {(view, chunk): [crc per file]}.
    ``buffers`` maps each file key to a buffer of the whole file. zlib releases the GIL on large
    buffers, so a few threads checksum in parallel."""
    keys = list(layout.files())

    def one(vc):
        out = []
        for key in keys:
            off, length = layout.chunk_span(key, *vc)
            out.append(zlib.crc32(buffers[key][off:off + length]))
        return vc, out

    if len(todo) < 8:
        return dict(map(one, todo))
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(pool.map(one, todo))


def chunk_rows_text(layout: Layout, view: int, chunk: int) -> str:
    """Which samples a chunk holds, in words: ``view 0 samples [8192, 16384)``."""
    start = chunk * layout.chunk_rows
    return f"view {view} samples [{start}, {min(start + layout.chunk_rows, layout.num_samples)})"


def new_params(num_samples, num_classes, *, views, dtype, topk, dataset_fingerprint, teacher, augment,
               chunk_rows, dataset_name=None, input_size=None) -> dict:
    """The create() arguments as a checked, JSON-normalised header body. ``input_size`` (int or
    (H, W); None: each image's own size) is the size the teacher's unaugmented inputs were resized
    and centre-cropped to."""
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    if input_size is not None:
        try:
            input_size = [int(v) for v in input_size]
        except (TypeError, ValueError) as err:
            raise StoreError(f"input_size must be an int or (H, W), got {input_size!r}") from err
        if len(input_size) != 2 or min(input_size) < 1:
            raise StoreError(f"input_size must be an int or (H, W) of positive sides, got {input_size!r}")
    if dtype not in DTYPES:
        raise StoreError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if augment is not None and not isinstance(augment, dict):
        augment = augment.to_dict()
    width = topk if topk is not None else num_classes
    if chunk_rows is None and isinstance(width, int) and width > 0:
        chunk_rows = default_chunk_rows(width, ITEMSIZE[dtype])
    params = {"format": FORMAT, "version": VERSION, "num_samples": num_samples,
              "num_classes": num_classes, "views": views, "dtype": dtype,
              "layout": "dense" if topk is None else "topk", "k": topk, "chunk_rows": chunk_rows,
              "dataset_fingerprint": dataset_fingerprint, "dataset": dataset_name, "teacher": teacher,
              "augment": augment, "input_size": input_size}
    try:
        params = json.loads(json.dumps(params))
    except TypeError as err:
        raise StoreError(f"teacher and augment must be JSON-serialisable ({err})") from err
    check_params(params, where="TeacherStore.create")
    return params
