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


class EL2NRecorder(Recorder):
    """EL2N (Paul et al. 2021): ``||softmax(z) - onehot(y)||_2``, taken from the fused loss's per-sample
    ``out.el2n`` during epoch ``epoch`` (0-based), i.e. with the weights of the step that served the
    sample after ``epoch`` full epochs of training. Nothing is recomputed."""

    _fields = {"sum": torch.float64, "count": torch.int64}

    def __init__(self, num_samples: int, epoch: int):
        super().__init__(num_samples)
        self.epoch = int(epoch)

    def on_batch(self, epoch, ids, logits, labels, out) -> None:
        if epoch != self.epoch:
            return
        ids = self._ids(ids)
        self.sum.index_add_(0, ids, out.el2n.detach().to(self.device, torch.float64))
        self.count.index_add_(0, ids, torch.ones_like(ids))

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
