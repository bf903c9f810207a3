"""One long-lived thread that runs an FFCV ``Loader``'s compiled pipeline, epoch after epoch.

FFCV starts a new thread for every epoch (its ``EpochIterator``) and gives it fresh buffers. On the
2-vCPU dev box starting that thread took 0.75 ms, and the epoch's first batches ran slower behind it:
~2 ms of fixed cost per epoch, 15 % of a Fashion-MNIST epoch of 10 % of the samples (13 ms), which
is what kept FFCV's f = 0.1 epoch over the 1.15 f target of issue 6. :class:`EpochRunner` starts one
thread per loader and hands it each epoch's batches through a queue.

It drives the same pieces of the pinned FFCV 1.0.2 that ``EpochIterator.run_pipeline`` does: the
Loader's generated code (``loader.code``), its reader's metadata and its memory manager's epoch
context. Our decoder allocates its own buffers (``ffcv_backend.next_batch``), so the graph asks FFCV
for none; a pipeline that did would be refused here rather than served from the wrong slots.

Unlike ``EpochIterator``, an error raised in the pipeline (a bad .beton, a refused batch) reaches
the caller instead of leaving it waiting for a batch that never comes.
"""
from __future__ import annotations

import queue
import threading
import weakref

import numba
import numpy as np

_END = object()  # the epoch's last item: every batch has been put


class _Failed:
    """A pipeline error on its way to the caller."""

    def __init__(self, error: BaseException):
        self.error = error


class Epoch:
    """The batches of one epoch: iterated by the caller while the runner's thread fills its queue
    (at most ``ahead`` decoded batches wait). ``stop()`` abandons it early."""

    def __init__(self, batches: list, ahead: int):
        self.batches = batches
        self._queue = queue.Queue(max(int(ahead), 1))
        self._stopped = threading.Event()
        self._finished = threading.Event()  # the runner's thread is done with this epoch

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def stop(self) -> None:
        """Make the runner drop the rest of this epoch, and wait until it has (emptying the queue it
        may be blocked on), so that nothing of this epoch is decoded after this returns."""
        self._stopped.set()
        while not self._finished.is_set():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._finished.wait(0.01)

    # -- on the runner's thread --------------------------------------------------------------------------
    def run(self, loader, no_buffers: dict, workers: int) -> None:
        try:
            numba.set_num_threads(workers)  # the calling thread's own setting (a few microseconds)
            code, outputs = loader.code
            metadata = loader.reader.metadata
            context = loader.memory_manager.schedule_epoch(self.batches)
            with context:
                for b_ix, ids in enumerate(self.batches):
                    if self._stopped.is_set():
                        return
                    context.start_batch(b_ix)
                    args = {"batch_indices": ids, "storage_state": context.state, "metadata": metadata,
                            **no_buffers}
                    for stage_code, define_outputs in code:
                        for node_id, result in zip(define_outputs, stage_code(**args)):
                            args[f"result_{node_id}"] = result
                    if not self._put((ids, *(args[f"result_{x}"] for x in outputs))):
                        return
            self._put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the caller, who raises it
            self._put(_Failed(err))
        finally:
            self._finished.set()

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False


class EpochRunner:
    """Runs epochs of ``loader`` (an ``ffcv.loader.Loader``) on one thread with ``workers`` numba
    threads. ``epoch(order)`` starts decoding the batches of ``order`` (``batch_size`` ids each, the
    last one shorter) at once and returns the :class:`Epoch` that yields ``(ids, *outputs)`` per batch.
    The thread ends when the runner is garbage-collected."""

    def __init__(self, loader, workers: int):
        allocations = loader.graph.allocate_memory(loader.batch_size, loader.batches_ahead + 2)
        asked = [node for kind in allocations.values() for node, memory in kind.items() if memory is not None]
        if asked:
            raise RuntimeError("EpochRunner serves pipelines that allocate no FFCV buffers; operations "
                               f"{asked} of this one ask for some")
        # the generated code still takes an argument per operation for its (absent) buffers
        self._no_buffers = {f"{prefix}memory_{node}": None for prefix, kind in (("", "operation"), ("shared_", "shared"))
                            for node in allocations[kind]}
        self.loader, self.workers = loader, int(workers)
        self._jobs = queue.SimpleQueue()
        self._thread = None

    def epoch(self, order: np.ndarray) -> Epoch:
        size = self.loader.batch_size
        job = Epoch([order[i:i + size] for i in range(0, len(order), size)], self.loader.batches_ahead)
        if self._thread is None:
            # the thread holds the queue only, not the runner: dropping the loader ends it
            self._thread = threading.Thread(target=_serve, args=(self._jobs,),
                                            name="kdprune-ffcv-epochs", daemon=True)
            self._thread.start()
            weakref.finalize(self, self._jobs.put, None)
        self._jobs.put((job, self.loader, self._no_buffers, self.workers))
        return job


def _serve(jobs: queue.SimpleQueue) -> None:
    while True:
        item = jobs.get()
        if item is None:
            return
        job, *args = item
        job.run(*args)
        del job, args, item  # hold nothing of a loader between epochs
