"""Writing a teacher store: rows in any order, resumable after a crash, published atomically.

Everything is written into the sibling directory ``PATH.partial``. Its ``header.json`` records the
parameters (a resume must match them) and its ``progress.log`` one line per finished chunk
(``view chunk crc32...``), appended only after the chunk's rows are flushed to disk, so a process
killed at any instant leaves a log that understates, never overstates, what is safely written. On
resume every logged chunk is checksummed again and dropped if it does not match. ``close()`` checks
that every sample of every view was written, verifies every chunk, writes the final header with the
checksums, fsyncs and renames ``PATH.partial`` to ``PATH``: a store at ``PATH`` is always complete.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import shutil
import zlib

import numpy as np
import torch

from kdprune.errors import StoreError
from kdprune.store import format as fmt
from kdprune.store.format import crc_chunks

PROGRESS = "progress.log"
LOCK = "lock"
_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@contextlib.contextmanager
def disk_errors(where: str, need: int | None = None):
    """Turn 'disk full' (and 'file too large', 'quota') into a StoreError that says what to do."""
    try:
        yield
    except OSError as err:
        if err.errno not in _NO_SPACE:
            raise
        free = shutil.disk_usage(os.path.dirname(where) or ".").free
        need_txt = f"it needs {need} bytes, " if need is not None else ""
        raise StoreError(f"no space left to write the teacher store at {where} ({err.strerror}; {need_txt}"
                         f"{free} bytes free there): free some space or write the store elsewhere; "
                         "what was written so far is kept and a re-run resumes") from err


class StoreWriter:
    """Returned by :meth:`TeacherStore.create`; use as a context manager or call :meth:`close`.

    ``opener`` (what :meth:`close` returns the published store through; TeacherStore.create passes
    ``TeacherStore.open``) keeps this module free of the reader."""

    def __init__(self, path, params: dict, overwrite: bool = False, opener=None):
        self.path = os.path.abspath(os.fspath(path).rstrip("/"))
        self._opener = opener
        self.partial = self.path + ".partial"
        self.params = params
        self.layout = fmt.layout_of(params)
        self.overwrite = overwrite
        self._closed = True
        if os.path.exists(self.path) and not overwrite:
            raise StoreError(f"a teacher store already exists at {self.path}: open it with "
                             "TeacherStore.open, delete it, or pass overwrite=True")
        os.makedirs(self.partial, exist_ok=True)
        self._lock_file = open(os.path.join(self.partial, LOCK), "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StoreError(f"another process is writing the teacher store {self.partial}; wait for it "
                             "or stop it (a killed writer releases the lock)") from None
        try:
            self.resumed = self._prepare_header()
            self._open_files()
            self._done = self._load_progress() if self.resumed else {}
        except BaseException:
            self._release()
            raise
        self._closed = False
        self._written = np.zeros((self.layout.views, self.layout.num_samples), dtype=bool)
        rows = self.layout.chunk_rows
        for view, chunk in self._done:
            self._written[view, chunk * rows:(chunk + 1) * rows] = True
        self._progress = open(os.path.join(self.partial, PROGRESS), "a")

    # -- setup ---------------------------------------------------------------------------------------
    def _prepare_header(self) -> bool:
        """Write the partial header, or check an existing one against our parameters. True = resume."""
        head_path = os.path.join(self.partial, fmt.HEADER)
        if os.path.exists(head_path):
            try:
                old = fmt.load_header(self.partial)
            except StoreError as err:
                raise StoreError(f"the partial store {self.partial} has an unreadable header ({err}); "
                                 "delete that directory and start again") from err
            diff = [k for k in fmt.PARAM_KEYS if old.get(k) != self.params.get(k)]
            if diff:
                detail = "; ".join(f"{k}: partial has {old.get(k)!r}, now {self.params.get(k)!r}" for k in diff)
                raise StoreError(f"a partial teacher store at {self.partial} was started with other "
                                 f"parameters ({detail}); resume it with the same arguments, or delete "
                                 "it to start over")
            return True
        with disk_errors(self.partial):
            fmt.dump_header(head_path, dict(self.params, complete=False))
        return False

    def _open_files(self) -> None:
        self._fds, self._maps, self._arrays = {}, {}, {}
        total = sum(self.layout.file_bytes(k) for k in self.layout.files())
        for key, dname in self.layout.files().items():
            size = self.layout.file_bytes(key)
            fd = os.open(os.path.join(self.partial, fmt.file_name(key)), os.O_RDWR | os.O_CREAT, 0o644)
            self._fds[key] = fd
            if os.fstat(fd).st_size > size:
                os.ftruncate(fd, size)
            # Reserve every block now: a full disk fails here with a clear error, not later as a
            # SIGBUS on a write through the memory map.
            with disk_errors(self.partial, total):
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, size)
                else:  # pragma: no cover (macOS)
                    os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_WRITE)
            self._maps[key] = mm
            self._arrays[key] = np.frombuffer(mm, dtype=fmt.NP_DTYPES[dname]).reshape(self.layout.shape())

    def _load_progress(self) -> dict:
        """Chunks logged as done whose bytes still match their logged crc32 (the last line wins)."""
        logged = {}
        nfiles = len(self.layout.files())
        try:
            with open(os.path.join(self.partial, PROGRESS)) as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return {}
        for line in lines[:-1]:  # the text after the last newline may be a torn write
            parts = line.split()
            try:
                view, chunk, *crcs = (int(p) for p in parts)
            except ValueError:
                continue
            if len(crcs) == nfiles and 0 <= view < self.layout.views and 0 <= chunk < self.layout.num_chunks:
                logged[(view, chunk)] = crcs
        now = crc_chunks(self._buffers(), self.layout, list(logged))
        return {vc: crcs for vc, crcs in logged.items() if now[vc] == crcs}

    def _buffers(self) -> dict:
        return {key: memoryview(mm) for key, mm in self._maps.items()}

    # -- writing -------------------------------------------------------------------------------------
    def write(self, ids, logits, view: int = 0) -> None:
        """Store the teacher's ``logits`` [len(ids), num_classes] for samples ``ids`` of view ``view``.

        Any order, any batch size; writing a sample again replaces it. A top-k store keeps the k
        largest logits of each row; it also takes ``(values, indices)``, each [len(ids), k].
        """
        if self._closed:
            raise StoreError(f"the writer of {self.path} is closed; create it again to resume")
        lay = self.layout
        if not isinstance(view, (int, np.integer)) or not 0 <= view < lay.views:
            raise StoreError(f"view must be an integer in [0, {lay.views}), got {view!r}")
        ids = _check_ids(ids, lay.num_samples)
        values, indices = self._encode(logits, ids)
        rows = _as_slice(ids)
        with disk_errors(self.partial):
            self._arrays["values"][view, rows] = values
            if indices is not None:
                self._arrays["indices"][view, rows] = indices
            self._written[view, ids] = True
            for chunk in np.unique(ids // lay.chunk_rows).tolist():
                start = chunk * lay.chunk_rows
                if self._written[view, start:start + lay.chunk_rows].all():
                    self._finish_chunk(view, chunk)

    def _encode(self, logits, ids: np.ndarray):
        """Check ``logits`` and convert them to the arrays of the file dtypes."""
        lay, n = self.layout, len(ids)
        torch_dtype = fmt.DTYPES[lay.dtype]
        if isinstance(logits, (tuple, list)):
            if lay.k is None:
                raise StoreError("(values, indices) pairs are for top-k stores; pass dense logits "
                                 f"[{n}, {lay.num_classes}]")
            values, indices = (torch.as_tensor(a) for a in logits)
            _check_values(values, (n, lay.k), ids)
            if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.shape != (n, lay.k):
                raise StoreError(f"top-k indices must be an integer tensor [{n}, {lay.k}], got "
                                 f"{indices.dtype} {tuple(indices.shape)}")
            indices = indices.long()
            if indices.numel() and (indices.min() < 0 or indices.max() >= lay.num_classes):
                raise StoreError(f"top-k indices must lie in [0, {lay.num_classes})")
            if lay.k > 1 and (indices.sort(1).values.diff(dim=1) == 0).any():
                raise StoreError("top-k indices repeat a class within a row")
            values, order = values.float().sort(1, descending=True)
            indices = indices.gather(1, order)
        else:
            values = torch.as_tensor(logits)
            _check_values(values, (n, lay.num_classes), ids)
            indices = None
            if lay.k is not None:
                values, indices = torch.topk(values.float(), lay.k, dim=1, sorted=True)
        values = values.detach().cpu().to(torch_dtype).contiguous()
        values = values.view(torch.int16).numpy().view(np.uint16) if lay.dtype == "bfloat16" else values.numpy()
        if indices is not None:
            indices = indices.detach().cpu().to(torch.int32).numpy()
        return values, indices

    def _finish_chunk(self, view: int, chunk: int) -> None:
        """Flush the chunk's rows to disk, then log it with its checksums."""
        crcs = []
        for key, mm in self._maps.items():
            off, length = self.layout.chunk_span(key, view, chunk)
            crcs.append(zlib.crc32(memoryview(mm)[off:off + length]))
            start = off - off % mmap.PAGESIZE
            mm.flush(start, off + length - start)
        self._progress.write(" ".join(map(str, (view, chunk, *crcs))) + "\n")
        self._progress.flush()
        self._done[(view, chunk)] = crcs

    def missing(self, view: int = 0) -> np.ndarray:
        """Sample ids of ``view`` not written yet (after a resume: those of unfinished chunks)."""
        return np.flatnonzero(~self._written[view])

    # -- finishing -----------------------------------------------------------------------------------
    def close(self):
        """Check completeness, verify, publish at ``path`` atomically; returns the opened store (the
        path when the writer was made without an opener)."""
        if self._closed:
            raise StoreError(f"the writer of {self.path} is already closed")
        try:
            self._check_complete()
            self._verify()
            self._publish()
        except BaseException:
            self._release()
            raise
        return self._opener(self.path) if self._opener else self.path

    def abort(self) -> None:
        """Stop writing but keep ``PATH.partial``, so that a later create() with the same arguments
        resumes from the chunks already finished."""
        if not self._closed:
            self._release()

    def _check_complete(self) -> None:
        for view in range(self.layout.views):
            miss = self.missing(view)
            if len(miss):
                raise StoreError(
                    f"{len(miss)} of {self.layout.num_samples} samples of view {view} were never written "
                    f"(first ids: {miss[:5].tolist()}), so the store was not published; {self.partial} "
                    "is kept: re-run the same `kdprune logits` command to finish it (in Python: "
                    "TeacherStore.create with the same arguments, then write writer.missing(view))")

    def _verify(self) -> None:
        todo = sorted(self._done)
        now = crc_chunks(self._buffers(), self.layout, todo)
        bad = [vc for vc in todo if now[vc] != self._done[vc]]
        if bad:
            raise StoreError(f"chunks (view, chunk) {bad[:5]} of {self.partial} changed after they were "
                             "written (disk or memory corruption?); delete that directory and write the store again")

    def _publish(self) -> None:
        lay = self.layout
        checksums = {key: [[0] * lay.num_chunks for _ in range(lay.views)] for key in lay.files()}
        for (view, chunk), crcs in self._done.items():
            for key, crc in zip(lay.files(), crcs):
                checksums[key][view][chunk] = crc
        files = {key: {"name": fmt.file_name(key), "dtype": dname, "shape": list(lay.shape()),
                       "bytes": lay.file_bytes(key)} for key, dname in lay.files().items()}
        with disk_errors(self.partial):
            for key, mm in self._maps.items():
                mm.flush()
                os.fsync(self._fds[key])
            fmt.dump_header(os.path.join(self.partial, fmt.HEADER),
                            dict(self.params, complete=True, files=files, checksum="crc32",
                                 checksums=checksums, fill_value=fmt.TOPK_FILL if lay.k else None,
                                 byte_order="little"))
        self._release()
        os.unlink(os.path.join(self.partial, PROGRESS))
        os.unlink(os.path.join(self.partial, LOCK))
        _fsync_dir(self.partial)
        old = None
        if os.path.exists(self.path):  # overwrite=True: swap the old store out only now
            old = f"{self.path}.old-{os.getpid()}"
            os.rename(self.path, old)
        os.rename(self.partial, self.path)
        _fsync_dir(os.path.dirname(self.path))
        if old:
            shutil.rmtree(old)

    def _release(self) -> None:
        """Unmap, close the files and the progress log, and drop the lock (the partial dir stays)."""
        self._arrays = {}
        for mm in getattr(self, "_maps", {}).values():
            with contextlib.suppress(BufferError, ValueError):
                mm.flush()
                mm.close()
        self._maps = {}
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)
        self._fds = {}
        if getattr(self, "_progress", None) is not None:
            self._progress.close()
            self._progress = None
        self._lock_file.close()  # closing the descriptor releases the flock
        self._closed = True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
            return False
        self.abort()
        saved = self.saved_text()
        if isinstance(exc, KeyboardInterrupt):
            exc.saved = saved  # the `kdprune` command prints it in its one line
        elif hasattr(exc, "add_note"):
            exc.add_note(f"kdprune: {saved}; re-running the same command (or TeacherStore.create with "
                         "the same arguments) resumes it")
        return False

    def saved_text(self) -> str:
        """What an interrupted writer keeps, in words."""
        done = int(self._written.sum()) if hasattr(self, "_written") else 0
        rows = self.layout.chunk_rows
        kept = sum(min(rows, self.layout.num_samples - c * rows) for _, c in self._done)
        return (f"{kept} of {self.layout.views * self.layout.num_samples} teacher-logit rows are saved in "
                f"{self.partial}" + (f" ({done - kept} more were written but not yet committed)"
                                     if done > kept else ""))


def _check_ids(ids, num_samples: int) -> np.ndarray:
    if torch.is_tensor(ids):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise StoreError(f"ids must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and (ids.min() < 0 or ids.max() >= num_samples):
        bad = ids[(ids < 0) | (ids >= num_samples)][0]
        raise StoreError(f"sample id {bad} is out of range [0, {num_samples}) for this store; "
                         "was it created with the right num_samples?")
    if ids.size > 1 and len(np.unique(ids)) != ids.size:
        raise StoreError("ids repeat within one write; each sample may appear once per call")
    return ids


def _check_values(values: torch.Tensor, shape: tuple, ids: np.ndarray) -> None:
    if not values.dtype.is_floating_point:
        raise StoreError(f"logits must be a floating-point tensor, got {values.dtype}")
    if tuple(values.shape) != shape:
        raise StoreError(f"logits for {shape[0]} ids must have shape {list(shape)}, got {list(values.shape)}")
    finite = torch.isfinite(values).all(1)
    if not bool(finite.all()):
        bad = int(ids[int((~finite).nonzero()[0])])
        raise StoreError(f"the logits of sample {bad} are not finite (NaN or inf); check the teacher")


def _as_slice(ids: np.ndarray):
    """A basic slice when ``ids`` is a consecutive run (a plain copy instead of a scatter)."""
    if ids.size and ids[-1] - ids[0] == ids.size - 1 and (ids.size == 1 or (np.diff(ids) == 1).all()):
        return slice(int(ids[0]), int(ids[-1]) + 1)
    return ids


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
