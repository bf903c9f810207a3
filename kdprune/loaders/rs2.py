"""RS2 (Okanovic et al. 2023, "Repeated random sampling for minimizing the time-to-accuracy of
learning"): instead of one fixed pruned subset, train each epoch on a fresh random subset of
``round(fraction * N)`` samples, drawn without replacement across epochs until the whole dataset has
been served, then from a new permutation.

The trainer uses it through :class:`RS2Loader` (``kdprune train --rs2 0.1``, or
``TrainConfig(rs2=0.1)``). By hand, with any loader backend (the subset of epoch e is the same on every
rank, and the loader shards it across ranks as it shards any IndexSet)::

    rs2 = RS2Sampler(len(dataset), fraction=0.1, seed=0)
    for epoch in range(epochs):
        ids = rs2.ids_for_epoch(epoch)              # an IndexSet, identical on every rank
        loader = kdprune.loaders.build("torch", dataset, ids, batch_size=256, train=True,
                                       seed=seed, distributed=None)   # or re-feed an existing loader
        loader.set_epoch(epoch)
        for batch in loader: ...

Because the epoch's loader is built for that epoch's ids, its ``len()`` is always right (a loader sized
once at build time would silently cut a changing subset). A learning-rate schedule sized in steps sees
``epochs * ceil(round(f * N) / batch)`` steps.

Rounds: round r is a permutation seeded by (seed, r); the epochs read it in consecutive slices of
``round(f * N)``. When an epoch's slice runs past the end of round r, it takes the tail of r and the
head of round r + 1; the ids in that tail are moved to the end of round r + 1 (a deterministic
reordering) so no epoch holds an id twice and every round still serves each id exactly once.
"""
from __future__ import annotations

import numpy as np

from kdprune.errors import ConfigError
from kdprune.selection import IndexSet, check_fraction


class RS2Sampler:
    """Per-epoch random subsets without replacement across epochs, deterministic by (seed, epoch).

    >>> import kdprune
    >>> rs2 = kdprune.RS2Sampler(10, fraction=0.3, seed=0)
    >>> [rs2.ids_for_epoch(epoch).ids.tolist() for epoch in range(4)]  # epochs 0-2 serve 9 distinct ids
    [[2, 4, 6], [3, 5, 7], [0, 8, 9], [1, 3, 9]]
    """

    def __init__(self, num_samples: int, fraction: float, seed: int = 0, dataset_fingerprint: str | None = None):
        if num_samples < 1:
            raise ConfigError(f"RS2 needs num_samples >= 1, got {num_samples}")
        self.num_samples = int(num_samples)
        self.fraction = check_fraction(fraction)
        self.per_epoch = int(round(self.fraction * self.num_samples))
        if self.per_epoch == 0:
            raise ConfigError(f"RS2 fraction {fraction} of {num_samples} samples draws none per epoch; "
                              "use a larger fraction")
        self.seed = int(seed)
        self.dataset_fingerprint = dataset_fingerprint
        self._rounds = {}  # round -> order; only the last two are kept

    def _round(self, r: int) -> np.ndarray:
        """The order of round ``r`` (each id once), built from round 0 on and cached."""
        if r in self._rounds:
            return self._rounds[r]
        start = max([q for q in self._rounds if q < r], default=-1)
        order = self._rounds.get(start)
        for q in range(start + 1, r + 1):
            fresh = np.random.default_rng([self.seed, q]).permutation(self.num_samples)
            if order is not None:
                tail = self._tail(q - 1, order)
                if tail.size:
                    in_tail = np.zeros(self.num_samples, bool)
                    in_tail[tail] = True
                    fresh = np.concatenate([fresh[~in_tail[fresh]], fresh[in_tail[fresh]]])
            order = fresh
            self._rounds = {k: v for k, v in self._rounds.items() if k >= q - 1}
            self._rounds[q] = order
        return order

    def _tail(self, r: int, order: np.ndarray) -> np.ndarray:
        """The ids of round ``r`` that the epoch straddling rounds r and r+1 takes from round r."""
        n, m = self.num_samples, self.per_epoch
        end = (r + 1) * n  # stream position where round r ends
        first = end // m  # the epoch that contains position ``end`` (if it straddles)
        pos = first * m
        if pos == end:  # epochs line up with the round boundary: nothing straddles
            return order[:0]
        return order[pos - r * n:]

    def ids_for_epoch(self, epoch: int) -> IndexSet:
        """The subset served in ``epoch`` (sorted, unique), the same for every rank and every call."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        n, m = self.num_samples, self.per_epoch
        start, stop = epoch * m, (epoch + 1) * m
        r = start // n
        order = self._round(r)
        ids = order[start - r * n: min(stop, (r + 1) * n) - r * n]
        if stop > (r + 1) * n:
            ids = np.concatenate([ids, self._round(r + 1)[: stop - (r + 1) * n]])
        meta = {"method": "rs2", "mode": "rs2", "fraction": self.fraction, "seed": self.seed, "epoch": int(epoch),
                "class_balanced": False, "num_samples": n, "dataset_fingerprint": self.dataset_fingerprint}
        return IndexSet(ids, meta)

    # --- the torch ``Sampler`` protocol, for a plain torch DataLoader over a map-style dataset ---

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that :meth:`__iter__` serves (call it before each epoch, as with
        ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def shard(self, epoch: int, distributed=None) -> np.ndarray:
        """This rank's ids of ``epoch``, shuffled by (seed, epoch) and dealt round-robin over ranks
        (padded to equal length, as ``DistributedSampler`` does); ``distributed`` as in the loaders."""
        from kdprune.loaders.batch import epoch_order, resolve_distributed
        rank, world = resolve_distributed(distributed)
        return epoch_order(self.ids_for_epoch(epoch).ids, seed=self.seed, epoch=epoch, shuffle=True,
                           rank=rank, world=world, drop_last=False, batch_size=1)

    def __iter__(self):
        return iter(self.shard(getattr(self, "epoch", 0)).tolist())

    def __len__(self) -> int:
        """Ids this rank serves per epoch (the whole per-epoch subset on a single process)."""
        from kdprune.loaders.batch import resolve_distributed
        _, world = resolve_distributed(None)
        return -(-self.per_epoch // world)


class RS2Loader:
    """A training loader whose subset is RS2's subset of the current epoch.

    ``make_loader(ids)`` builds an ordinary loader (anything with ``len()``, ``set_epoch`` and
    iteration, e.g. a partial of :func:`kdprune.loaders.build`) over an :class:`IndexSet`. Whenever
    :meth:`set_epoch` moves to another epoch, a loader that can change its subset (``set_ids``: every
    kdprune backend, which so keeps its workers and, on FFCV, its compiled pipeline) is handed the new
    ids, and any other is built again, so ``len()`` always counts the batches of the epoch being served,
    and each rank gets its disjoint, equal shard of that epoch's subset. The
    ids of epoch e and their order depend only on (seed, e), so a run resumed mid-epoch that skips the
    batches already trained on reads exactly the ids the interrupted run would have read.
    """

    def __init__(self, sampler: RS2Sampler, make_loader):
        self.sampler, self.make_loader = sampler, make_loader
        self.epoch = None
        self._loader = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch``: its subset, in its order."""
        epoch = int(epoch)
        if epoch != self.epoch:
            ids = self.sampler.ids_for_epoch(epoch)
            if hasattr(self._loader, "set_ids"):
                self._loader.set_ids(ids)
            else:
                self._loader = self.make_loader(ids)
            self.epoch = epoch
        self._loader.set_epoch(epoch)

    @property
    def ids(self) -> np.ndarray:
        """The sorted ids of the current epoch's subset (all ranks together)."""
        return self.sampler.ids_for_epoch(self.epoch).ids

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        return iter(self._loader)
