"""Training-dynamics scores as recorders fed by the training loop (:func:`kdprune.train.fit`).

A recorder is a callback: ``on_batch(epoch, ids, logits, labels, out)`` sees each step's detached
logits and the loss's per-sample outputs (``out.el2n``) and accumulates into per-sample arrays of size
N; ``finalize()`` returns a float32[N] numpy array oriented so that higher = harder. No recorder runs a
forward pass of its own, so a score costs the training it rides on plus O(B) bookkeeping per step.

The arrays live on the device of the first batch and are updated with index ops, so a step never
waits for the host; only ``finalize`` copies them back. Each recorder describes one training run;
average several runs (seeds) with :func:`average`. Under DDP each rank sees only its shard:
:meth:`Recorder.merge` adds another rank's state (EL2N, AUM).
"""
from __future__ import annotations

import numpy as np
import torch

from kdprune.errors import DataError


class Recorder:
    """Per-sample tensors named in ``_fields`` (allocated on first use), merged by addition."""

    _fields: dict = {}  # name -> dtype

    def __init__(self, num_samples: int):
        if num_samples < 1:
            raise DataError(f"a recorder needs num_samples >= 1, got {num_samples}")
        self.num_samples = int(num_samples)
        self.device = None

    @classmethod
    def for_run(cls, num_samples: int, epochs: int) -> "Recorder":
        """The recorder of a run of ``epochs`` epochs over ``num_samples`` samples."""
        return cls(num_samples)

    def _ensure(self, device) -> None:
        if self.device is None:
            self.device = torch.device(device)
            for name, dtype in self._fields.items():
                setattr(self, name, torch.zeros(self.num_samples, dtype=dtype, device=self.device))

    def _ids(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids)
        self._ensure(ids.device)
        ids = ids.to(self.device, torch.int64)
        # checked where it costs no device sync; on a GPU an out-of-range id fails in the index op
        if ids.device.type == "cpu" and ids.numel() and (ids.min() < 0 or ids.max() >= self.num_samples):
            raise DataError(f"sample ids must lie in [0, {self.num_samples}), found "
                            f"[{int(ids.min())}, {int(ids.max())}]; size the recorder for the whole dataset")
        return ids

    def merge(self, other: "Recorder") -> "Recorder":
        """Add ``other``'s counts (another DDP rank's shard of the same run) into this one."""
        if type(other) is not type(self) or other.num_samples != self.num_samples:
            raise DataError("can only merge recorders of the same kind and size")
        if other.device is None:
            return self
        self._ensure(other.device)
        for name in self._fields:
            getattr(self, name).add_(getattr(other, name).to(self.device))
        return self

    def _seen(self, counts: torch.Tensor | None, what: str) -> np.ndarray:
        counts = np.zeros(self.num_samples, np.int64) if counts is None else counts.cpu().numpy()
        missing = np.flatnonzero(counts == 0)
        if missing.size:
            raise DataError(f"{missing.size} of {self.num_samples} samples were never {what} "
                            f"(e.g. ids {missing[:5].tolist()}); train on all ids with drop_last=False, "
                            "or merge the recorders of every DDP rank")
        return counts


class EL2NTable(Recorder):
    """Per-sample EL2N of every epoch, from the loss's per-sample ``out.el2n``: the one EL2N
    accumulator, which both the trainer's table (:class:`kdprune.train.scoretable.ScoreTable`) and
    :class:`EL2NRecorder` are.

    :meth:`add` sums each step's values into device buffers indexed by sample id (no host sync);
    :meth:`end_epoch` reduces them over ranks with ``reduce`` (a function that sums a tensor across
    processes in place and returns it; the default sums nothing, for one process), keeps that epoch's
    row (the mean EL2N of each sample in the epoch, NaN where a sample was not served) and resets the
    buffers. Rows are kept as ``row_dtype``: float16 keeps 3 significant digits of a value in
    [0, sqrt 2], so 90 epochs of ImageNet take 230 MB rather than 460 MB. :meth:`score` is the mean
    over the epochs recorded, accumulated in float64 rather than from the rounded rows.

    >>> import torch
    >>> table = EL2NTable(3, "cpu")
    >>> table.add(torch.tensor([0, 2]), torch.tensor([0.5, 1.0]))
    >>> table.end_epoch().tolist()
    [0.5, nan, 1.0]
    """

    _fields = {"sum": torch.float32, "count": torch.float32}

    def __init__(self, num_samples: int, device=None, *, reduce=None, row_dtype=np.float16):
        super().__init__(num_samples)
        self.reduce = reduce or (lambda tensor: tensor)
        self.row_dtype = row_dtype
        self._rows: list[np.ndarray] = []
        self._total = np.zeros(self.num_samples, np.float64)  # sum over epochs of the epoch means
        self._epochs_seen = np.zeros(self.num_samples, np.int64)
        if device is not None:
            self._ensure(device)

    def add(self, ids, el2n: torch.Tensor) -> None:
        ids = self._ids(ids)
        self.sum.index_add_(0, ids, el2n.detach().to(self.device, torch.float32))
        self.count.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float32, device=self.device))

    def on_batch(self, epoch, ids, logits, labels, out) -> None:
        self.add(ids, out.el2n)

    def on_epoch_end(self, epoch) -> None:
        self.end_epoch()

    def _mean(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.sum / self.count.clamp_min(1), torch.nan)

    def end_epoch(self) -> np.ndarray:
        """Reduce over ranks, append this epoch's row, reset the buffers; returns the row."""
        self._ensure("cpu")
        self.reduce(self.sum)
        self.reduce(self.count)
        row = self._mean().cpu().numpy()
        self._rows.append(row.astype(self.row_dtype))
        seen = ~np.isnan(row)
        self._total[seen] += row[seen]
        self._epochs_seen[seen] += 1
        self.sum.zero_()
        self.count.zero_()
        return self._rows[-1]

    def rows(self) -> np.ndarray:
        """``[epochs_done, num_samples]`` in ``row_dtype``."""
        return np.stack(self._rows) if self._rows else np.zeros((0, self.num_samples), self.row_dtype)

    def score(self) -> np.ndarray:
        """Mean EL2N over the epochs recorded, float32 (NaN for samples never served)."""
        n = self._epochs_seen
        return np.where(n > 0, self._total / np.maximum(n, 1), np.nan).astype(np.float32)

    def state_dict(self) -> dict:
        """Partial buffers summed over ranks (every rank must call this), plus the finished rows."""
        self._ensure("cpu")
        s, c = self.reduce(self.sum.clone()), self.reduce(self.count.clone())
        return {"sum": s.cpu(), "count": c.cpu(), "rows": [torch.from_numpy(r) for r in self._rows],
                "total": torch.from_numpy(self._total), "epochs_seen": torch.from_numpy(self._epochs_seen)}

    def load_state_dict(self, state: dict, main: bool = True) -> None:
        """Restore; only the main rank takes the partial sums (the epoch-end reduce adds the rest)."""
        self._ensure("cpu")
        self._rows = [r.numpy().copy() for r in state["rows"]]
        self._total = state["total"].numpy().copy()
        self._epochs_seen = state["epochs_seen"].numpy().copy()
        if main:
            self.sum.copy_(state["sum"])
            self.count.copy_(state["count"])


class EL2NRecorder(EL2NTable):
    """EL2N (Paul et al. 2021): ``||softmax(z) - onehot(y)||_2``, taken from the fused loss's per-sample
    ``out.el2n`` during epoch ``epoch`` (0-based), i.e. with the weights of the step that served the
    sample after ``epoch`` full epochs of training. Nothing is recomputed: this is the
    :class:`EL2NTable` fed during that one epoch only."""

    def __init__(self, num_samples: int, epoch: int):
        super().__init__(num_samples, row_dtype=np.float32)
        self.epoch = int(epoch)

    @classmethod
    def for_run(cls, num_samples: int, epochs: int) -> "EL2NRecorder":
        """EL2N of the last of ``epochs`` epochs."""
        return cls(num_samples, epoch=epochs - 1)

    def on_batch(self, epoch, ids, logits, labels, out) -> None:
        if epoch == self.epoch:
            self.add(ids, out.el2n)

    def on_epoch_end(self, epoch) -> None:
        pass  # the buffers hold epoch ``self.epoch`` until finalize

    def finalize(self) -> np.ndarray:
        count = self._seen(getattr(self, "count", None), f"served in epoch {self.epoch}")
        return (self.sum.cpu().numpy() / count).astype(np.float32)


class ForgettingRecorder(Recorder):
    """Forgetting events (Toneva et al. 2019): the number of times a sample goes from correctly to
    incorrectly classified between consecutive presentations (correctness = argmax of the step's
    logits). A sample never classified correctly is ranked as that paper ranks it, as the most
    forgettable: its score is its number of presentations, more than any learned sample can reach
    (``P`` presentations allow at most ``P // 2`` forgetting events)."""

    _fields = {"forgets": torch.int64, "presentations": torch.int64, "learned": torch.int64,
               "prev": torch.int64}  # prev: correctness at the last presentation (0 before the first)

    def update(self, ids, correct) -> None:
        """Record one presentation of each of ``ids`` with ``correct`` (bools); an id may appear at
        most once per call."""
        ids = self._ids(ids)
        correct = torch.as_tensor(correct).to(self.device, torch.int64)
        prev = self.prev[ids]
        self.forgets.index_add_(0, ids, (prev > correct).long())
        self.presentations.index_add_(0, ids, torch.ones_like(ids))
        self.learned.index_add_(0, ids, correct)
        self.prev[ids] = correct

    def on_batch(self, epoch, ids, logits, labels, out) -> None:
        self.update(ids, logits.argmax(1) == labels.to(logits.device))

    def merge(self, other):
        raise DataError("forgetting counts depend on each sample's own sequence and cannot be summed "
                        "across ranks; gather (ids, correct) per step to one recorder instead")

    def finalize(self) -> np.ndarray:
        presented = self._seen(getattr(self, "presentations", None), "presented")
        score = self.forgets.cpu().numpy().astype(np.float32)
        never = self.learned.cpu().numpy() == 0
        score[never] = presented[never]
        return score


class AUMRecorder(Recorder):
    """Area under the margin (Pleiss et al. 2020): the mean over presentations of the logit margin
    ``z_y - max_{j != y} z_j``. A low (negative) AUM marks a hard or mislabelled sample, so the score
    is ``-AUM`` (higher = harder)."""

    _fields = {"sum": torch.float64, "count": torch.int64}

    @staticmethod
    def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``z_y - max_{j != y} z_j`` per row, float32 [B]."""
        z = logits.float()
        labels = labels.to(z.device)[:, None]
        return z.gather(1, labels).squeeze(1) - z.scatter(1, labels, float("-inf")).amax(1)

    def on_batch(self, epoch, ids, logits, labels, out) -> None:
        ids = self._ids(ids)
        self.sum.index_add_(0, ids, self.margins(logits, labels).to(self.device, torch.float64))
        self.count.index_add_(0, ids, torch.ones_like(ids))

    def finalize(self) -> np.ndarray:
        count = self._seen(getattr(self, "count", None), "presented")
        return (-(self.sum.cpu().numpy() / count)).astype(np.float32)


def average(runs) -> np.ndarray:
    """Mean of several runs' float32[N] scores (one per seed), as float32."""
    runs = [np.asarray(r, np.float64) for r in runs]
    if not runs:
        raise DataError("no runs to average")
    return np.mean(runs, axis=0).astype(np.float32)
