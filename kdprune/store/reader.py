"""Reading a teacher store: ``TeacherStore.open(path).gather(ids, view)``.

One read-only memory map per file per process, opened on first use and re-opened after a fork
(the pid is checked), so a store object can be pickled to DataLoader workers and DDP ranks and every
process shares the same page cache. Rows are copied out by ``torch.ops.kdprune.gather_rows``, a
multi-threaded, bounds-checked C++ gather (``csrc/gather.cpp``).

Integrity on use: no gather returns rows whose chunk checksum has not been checked. Each (view,
chunk) is checked against the header the first time it is read (a bitmap, one bit per 4 MiB chunk);
:meth:`TeacherStore.prefault` and :meth:`TeacherStore.verify` check every chunk at once. The bitmap
travels with the object to DataLoader workers and DDP ranks, tied to the file's identity (device,
inode, size, modification time): a file replaced or rewritten since is checked again.
"""
from __future__ import annotations

import mmap
import os
import warnings

import numpy as np
import torch

from kdprune.errors import ConfigError, StoreError
from kdprune.store import format as fmt
from kdprune.store import pages
from kdprune.store.format import crc_chunks, new_params
from kdprune.store.writer import StoreWriter


class TeacherStore:
    """Teacher logits per sample (and per augmented view), memory-mapped; see docs/store-format.md.

    >>> import os, tempfile, torch, kdprune
    >>> path = os.path.join(tempfile.mkdtemp(), "store")
    >>> with kdprune.TeacherStore.create(path, num_samples=4, num_classes=3, dtype="float32") as writer:
    ...     writer.write([0, 1, 2, 3], torch.arange(12.).reshape(4, 3))
    >>> kdprune.TeacherStore.open(path).gather(torch.tensor([3, 1]))
    tensor([[ 9., 10., 11.],
            [ 3.,  4.,  5.]])
    """

    def __init__(self, path: str, header: dict):
        self.path = path
        self._header = header
        self.layout = fmt.layout_of(header)
        self._pid = None
        self._maps: dict = {}
        self._tensors: dict = {}
        self._prefault = False
        # (view, chunk) checked against the header in this process (or in the one it came from)
        self._checked = np.zeros((self.layout.views, self.layout.num_chunks), dtype=bool)
        self._all_checked = False
        self._identity = None

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, num_samples: int, num_classes: int, *, views: int = 1, dtype: str = "float16",
               topk: int | None = None, dataset_fingerprint: str | None = None, teacher=None, augment=None,
               chunk_rows: int | None = None, overwrite: bool = False,
               dataset_name: str | None = None, input_size=None) -> StoreWriter:
        """A writer for a new store at ``path`` (str or os.PathLike; or the resumption of
        ``path.partial`` when one with the same arguments exists). ``topk=k`` keeps only the k largest
        logits of each row; ``augment`` (an :class:`~kdprune.data.Augment`) records the augmentation
        the views were computed on; ``teacher`` is any JSON-serialisable description;
        ``dataset_name`` names the dataset in provenance errors; ``input_size`` (int or (H, W)) records
        the size the unaugmented inputs were resized to (None: each image's own size)."""
        params = new_params(num_samples, num_classes, views=views, dtype=dtype, topk=topk,
                            dataset_fingerprint=dataset_fingerprint, teacher=teacher, augment=augment,
                            chunk_rows=chunk_rows, dataset_name=dataset_name, input_size=input_size)
        return StoreWriter(path, params, overwrite=overwrite, opener=cls.open)

    @classmethod
    def open(cls, path, expect_fingerprint=None) -> "TeacherStore":
        """Open a published store (``path`` str or os.PathLike). Checks the header (format, version,
        checksum) and the file sizes, and, when ``expect_fingerprint`` is given (a fingerprint, or a
        dataset), that the store was written for that dataset."""
        path = os.path.abspath(os.fspath(path).rstrip("/"))
        header = fmt.load_header(path)
        if not header.get("complete") or "checksums" not in header:
            raise StoreError(f"{path} is an unfinished store; finish it by re-running the command that wrote it")
        layout = fmt.layout_of(header)
        sums = header["checksums"]
        for key in layout.files():
            if len(sums.get(key, [])) != layout.views or any(len(c) != layout.num_chunks for c in sums[key]):
                raise StoreError(f"{path}/header.json lists the wrong number of checksums for {key}; "
                                 "re-create the store with `kdprune logits`")
        fmt.check_files(path, layout)
        store = cls(path, header)
        if expect_fingerprint is not None:
            store.check_fingerprint(expect_fingerprint)
        return store

    def check_fingerprint(self, expected, missing_ok: bool = False) -> None:
        """Raise ProvenanceError unless this store was written for dataset ``expected`` (a fingerprint,
        a dataset, or anything :func:`kdprune.provenance.dataset_id` reads); a store that records no
        fingerprint is an error too unless ``missing_ok``."""
        from kdprune.provenance import require_same

        require_same(self.meta, expected, what=f"the teacher store {self.path}", missing_ok=missing_ok,
                     fix="compute the teacher's logits on the dataset used here (`kdprune logits --teacher "
                         f"TEACHER/model.pt --dataset ... --out NEW_STORE`) {self.rebuild_hint()}")

    def rebuild_hint(self) -> str:
        """How this store was made, for error messages: its teacher checkpoint and dataset."""
        teacher = self._header.get("teacher")
        made = []
        if isinstance(teacher, dict) and teacher.get("checkpoint"):
            made.append(f"teacher {teacher['checkpoint']}")
        if self._header.get("dataset"):
            made.append(f"dataset {self._header['dataset']}")
        aug = self._header.get("augment")
        made.append(f"{self.views} view(s), " + ("augmented" if aug else "no augmentation"))
        return "(this store was made from " + ", ".join(made) + ")"

    def logits_command(self, out: str | None = None) -> str:
        """The `kdprune logits` command that makes a store like this one (at ``out``, default its own
        path), as far as the header tells: teacher checkpoint, dataset, views, augmentation, input size."""
        from kdprune.provenance import dataset_flags

        teacher = self._header.get("teacher")
        ckpt = teacher.get("checkpoint") if isinstance(teacher, dict) else None
        parts = ["kdprune logits --teacher", ckpt or "TEACHER/model.pt", dataset_flags(self._header.get("dataset"))]
        aug = self._header.get("augment")
        if aug:
            parts += [f"--views {self.views} --augment", f"--augment-seed {aug.get('seed', 0)}"]
        size = self._header.get("input_size")
        if size and size[0] == size[1]:
            parts.append(f"--image-size {size[0]}")
        return " ".join(parts + ["--out", out or self.path])

    # -- properties ----------------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return self.layout.num_samples

    @property
    def num_classes(self) -> int:
        return self.layout.num_classes

    @property
    def views(self) -> int:
        return self.layout.views

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of gathered logits (the stored dtype)."""
        return fmt.DTYPES[self.layout.dtype]

    @property
    def meta(self) -> dict:
        """The header without the checksum lists: includes ``augment`` (Augment.to_dict() or None),
        ``teacher`` and ``dataset_fingerprint``."""
        return {k: v for k, v in self._header.items() if k != "checksums"}

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        lay = self.layout
        kind = f"top-{lay.k}" if lay.k else "dense"
        return (f"TeacherStore({self.path!r}, samples={lay.num_samples}, classes={lay.num_classes}, "
                f"views={lay.views}, {lay.dtype}, {kind})")

    # -- memory maps (one set per process) ---------------------------------------------------------------
    def _arrays(self) -> dict:
        if self._pid != os.getpid():
            self._map()
        return self._tensors

    def _map(self) -> None:
        self._maps, self._tensors = {}, {}
        fmt.check_files(self.path, self.layout)  # sizes again: mapping past the end would SIGBUS on read
        for key, dname in self.layout.files().items():
            with open(os.path.join(self.path, fmt.file_name(key)), "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                pages.want_huge_pages(mm)
                with warnings.catch_warnings():
                    # the map is read-only and nothing writes through these tensors (they never leave here)
                    warnings.simplefilter("ignore", UserWarning)
                    flat = torch.frombuffer(mm, dtype=fmt.DTYPES.get(dname, torch.int32))
                if self._prefault:
                    pages.populate(mm)
                    pages.refresh_huge(mm, f.fileno(), flat.data_ptr())
            self._maps[key] = mm
            # one tensor per view, made here once: slicing one per gather costs ~2 us of a ~0.2 ms gather
            self._tensors[key] = flat.view(self.layout.shape()).unbind(0)
        identity = self._file_identity()
        if identity != self._identity:  # another file than the one checked before: check it again
            self._checked[:] = False
            self._all_checked = False
            self._identity = identity
        self._pid = os.getpid()
        if self._prefault and not self._all_checked:
            self._check_chunks([(v, c) for v in range(self.layout.views) for c in range(self.layout.num_chunks)])

    def _file_identity(self) -> tuple:
        out = []
        for key in self.layout.files():
            st = os.stat(os.path.join(self.path, fmt.file_name(key)))
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def close(self) -> None:
        """Drop this process's maps (they are re-opened on the next gather)."""
        self._tensors, self._maps, self._pid = {}, {}, None

    def prefault(self) -> "TeacherStore":
        """Read the whole store into the page cache and map every page of it into this process now
        (and again in every process it is pickled or forked to), so that no gather waits on the disk
        or takes a page fault. What a training loop wants: on the ImageNet-sized store a gather of
        1024 random rows from a map that has not been touched yet pays a page fault per row.
        Costs one read of the store per machine (page cache) plus its page tables per process.
        Where less than 90% of a map lands in 2 MiB pages (a store read back under memory pressure),
        the file is read into the page cache again in 2 MiB folios (``pages.refresh_huge``): random
        rows then cost no page walk."""
        self._prefault = True
        self._map()
        return self

    def __getstate__(self):
        return {"path": self.path, "_header": self._header, "layout": self.layout, "_prefault": self._prefault,
                "_checked": self._checked, "_all_checked": self._all_checked, "_identity": self._identity}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._prefault = state.get("_prefault", False)
        self._pid, self._maps, self._tensors = None, {}, {}

    # -- reading ---------------------------------------------------------------------------------------------
    def gather(self, ids, view: int = 0, out: torch.Tensor | None = None, pin_memory: bool = False) -> torch.Tensor:
        """Teacher logits ``[len(ids), num_classes]`` of samples ``ids`` in view ``view``, dense, in the
        stored dtype. A top-k store fills the classes it did not keep with ``meta["fill_value"]``."""
        from kdprune import _native

        _native.load()
        lay = self.layout
        if not isinstance(view, (int, np.integer)) or not 0 <= view < lay.views:
            raise StoreError(f"view must be an integer in [0, {lay.views}) for {self.path}, got {view!r}")
        ids = _ids_tensor(ids)
        out = self._out(out, len(ids), pin_memory)
        arrays = self._arrays()
        if not self._all_checked:
            self._check_ids(ids, int(view))
        gather_rows = torch.ops.kdprune.gather_rows
        try:
            if lay.k is None:
                gather_rows(arrays["values"][view], ids, out)
            else:
                values = gather_rows(arrays["values"][view], ids, torch.empty(len(ids), lay.k, dtype=self.dtype))
                idx = gather_rows(arrays["indices"][view], ids, torch.empty(len(ids), lay.k, dtype=torch.int32))
                out.fill_(fmt.TOPK_FILL).scatter_(1, idx.long(), values)
        except IndexError as err:
            raise StoreError(f"{self.path}: {str(err).splitlines()[0]}") from None
        return out

    def _out(self, out, n: int, pin_memory: bool) -> torch.Tensor:
        shape = (n, self.num_classes)
        if out is None:
            if pin_memory and not torch.cuda.is_available():
                raise ConfigError("pin_memory=True needs a CUDA device (pinned memory is for host-to-GPU "
                                  "copies); pass pin_memory=False on a CPU-only machine")
            return torch.empty(shape, dtype=self.dtype, pin_memory=pin_memory)
        if (out.dtype != self.dtype or tuple(out.shape) != shape or out.device.type != "cpu"
                or not out.is_contiguous()):
            raise StoreError(f"out must be a contiguous CPU {self.dtype} tensor of shape {list(shape)}, got "
                             f"{out.dtype} {list(out.shape)} on {out.device}")
        return out

    # -- integrity ---------------------------------------------------------------------------------------
    def _check_ids(self, ids: torch.Tensor, view: int) -> None:
        """Check the chunks ``ids`` fall in that this process has not checked yet (ids out of range are
        left to the gather, which names them)."""
        chunks = np.unique(ids.numpy() // self.layout.chunk_rows)
        chunks = chunks[(chunks >= 0) & (chunks < self.layout.num_chunks)]
        todo = chunks[~self._checked[view, chunks]]
        if len(todo):
            self._check_chunks([(view, int(c)) for c in todo])

    def _check_chunks(self, todo: list) -> None:
        """crc32 of each (view, chunk) in ``todo`` against the header; StoreError naming the damaged samples."""
        buffers = {key: memoryview(mm) for key, mm in self._maps.items()}
        try:
            now = crc_chunks(buffers, self.layout, todo)
        finally:
            for b in buffers.values():
                b.release()
        sums = self._header["checksums"]
        bad = [f"{fmt.file_name(key)} {fmt.chunk_rows_text(self.layout, *vc)}" for vc in todo
               for key, crc in zip(self.layout.files(), now[vc]) if crc != sums[key][vc[0]][vc[1]]]
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise StoreError(f"{self.path} is corrupted: checksum mismatch in {'; '.join(bad[:5])}{more}, so the "
                             "teacher logits of those samples cannot be trusted and nothing was read from them. "
                             f"Rebuild the store: delete {self.path} and run `{self.logits_command()}` (the command "
                             f"that made it, as far as its header tells); `kdprune info {self.path}` checks every chunk")
        for view, chunk in todo:
            self._checked[view, chunk] = True
        if self._checked.all():
            self._all_checked = True

    def verify(self) -> dict:
        """Recompute every chunk checksum; raise StoreError naming the damaged rows, else return a summary."""
        lay = self.layout
        fmt.check_files(self.path, lay)
        self._arrays()
        self._checked[:] = False
        self._all_checked = False
        self._check_chunks([(v, c) for v in range(lay.views) for c in range(lay.num_chunks)])
        return {"chunks": len(self._checked.flat) * len(lay.files()),
                "bytes": sum(lay.file_bytes(k) for k in lay.files())}


def _ids_tensor(ids) -> torch.Tensor:
    if (torch.is_tensor(ids) and ids.dtype == torch.int64 and ids.dim() == 1 and ids.device.type == "cpu"
            and ids.is_contiguous()):
        return ids  # what loaders pass: nothing to convert (the op checks the range)
    if not torch.is_tensor(ids):
        arr = np.asarray(ids)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_ or arr.dtype.kind in "fc"):
            raise StoreError(f"ids must be a 1-D array of int64 sample ids, got {arr.dtype} values "
                             "(integers beyond the int64 range, or not integers at all)")
        ids = torch.from_numpy(np.ascontiguousarray(arr))
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise StoreError(f"ids must be a 1-D integer tensor, got {ids.dtype} of shape {list(ids.shape)}")
    return ids.to(device="cpu", dtype=torch.int64).contiguous()
