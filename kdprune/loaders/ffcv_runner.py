"""One long-lived thread that runs an FFCV ``Loader``'s compiled pipeline, epoch after epoch, with
the caller decoding too whenever the batch it needs next is not ready.

FFCV starts a new thread for every epoch (its ``EpochIterator``) and gives it fresh buffers. On the
2-vCPU dev box starting that thread took 0.75 ms, and the epoch's first batches ran slower behind it:
~2 ms of fixed cost per epoch, 15 % of a Fashion-MNIST epoch of 10 % of the samples (13 ms), which
is what kept FFCV's f = 0.1 epoch over the 1.15 f target of issue 6. :class:`EpochRunner` starts one
thread per loader and hands it each epoch.

Batches are claimed in order from a shared counter, by the runner's thread and by the caller: a
caller that would otherwise wait for batch k (a loop faster than the decode, as in a throughput
benchmark) decodes the next unclaimed batch itself, from the epoch's first batch on. Handing every
batch from a decoding thread to a waiting one cost more than decoding it on small images
(Fashion-MNIST, 2 vCPUs: 0.47 ms per batch through the hand-off, 0.32 ms decoded in place); sharing
the work took the epoch from 118-143 ms to 82-95 ms. When the caller's loop is the slower one (a
training step) the runner stays ahead and the caller only takes finished batches. While the caller
decodes, the two split the workers' threads (``_Pipeline``).

It drives the same pieces of the pinned FFCV 1.0.2 that ``EpochIterator.run_pipeline`` does: the
Loader's generated code (``loader.code``), its reader's metadata and its memory manager's epoch
context. The graph asks FFCV for no buffers (a pipeline that did would be refused here rather than
served from the wrong slots): the runner gets each batch's from ``buffers(ids)`` on the thread that
decodes it, and passes them as the memory argument of the pipeline's operation
(``ffcv_backend.FFCVLoader.next_batch``: an output array of its own per batch).

Unlike ``EpochIterator``, an error raised in the pipeline (a bad .beton, a refused batch) reaches
the caller instead of leaving it waiting for a batch that never comes.
"""
from __future__ import annotations

import atexit
import queue
import sys
import threading
import weakref

import numba
import numpy as np


class _Failed:
    """A pipeline error on its way to the caller."""

    def __init__(self, error: BaseException):
        self.error = error


class _Pipeline:
    """The compiled pipeline of one FFCV Loader, run on a batch from any thread."""

    def __init__(self, loader, memory_args: dict, workers: int, buffers=None):
        self.loader, self.memory_args, self.workers = loader, memory_args, workers
        self.buffers = buffers  # (argument name, (ids) -> its value) of the one operation, or None
        # While the caller decodes a batch, the two split the workers' threads, so that the decode
        # never runs more threads than it was given (on 2 vCPUs, 3 busy threads made Fashion-MNIST
        # epochs of 65-205 ms, 2 of 56-102 ms); and the caller's batch is not much slower than the
        # runner's, so the runner, held at `ahead` batches past the caller, is not left waiting.
        self.caller_threads = max(workers // 2, 1)
        self.shared_threads = max(workers - self.caller_threads, 1)  # the runner's meanwhile
        # Set once the runner's thread has run a batch, so numba has compiled the pipeline there: a
        # Ctrl-C during a compile on the caller's thread lands in an LLVM callback that swallows it,
        # and the process hung.
        self.compiled = False

    def decode(self, ids, b_ix: int, context):
        """``(ids, *outputs)`` of batch ``b_ix`` (``ids``), in the memory context of its epoch."""
        code, outputs = self.loader.code
        context.start_batch(b_ix)
        args = {"batch_indices": ids, "storage_state": context.state, "metadata": self.loader.reader.metadata,
                **self.memory_args}
        if self.buffers is not None:
            name, buffers = self.buffers
            args[name] = buffers(ids)
        for stage_code, define_outputs in code:
            for node_id, result in zip(define_outputs, stage_code(**args)):
                args[f"result_{node_id}"] = result
        return (ids, *(args[f"result_{x}"] for x in outputs))


class Epoch:
    """The batches of one epoch, yielded in order while the runner's thread decodes them (at most
    ``ahead`` batches past the one the caller is at). With ``share``, a caller that finds the batch it
    needs still underway decodes the next unclaimed one itself. ``stop()`` abandons the epoch."""

    def __init__(self, batches: list, ahead: int, pipeline: _Pipeline, context, share: bool):
        self.batches = batches
        self._ahead, self._pipeline, self._share = max(int(ahead), 1), pipeline, share
        self._context = context  # the memory context of the epoch (FFCV's, from schedule_epoch)
        self._done = [None] * len(batches)  # decoded batches not yet yielded (or a _Failed)
        self._claimed = 0  # batches [0, _claimed) have been taken by a thread
        self._served = 0  # batches [0, _served) have been yielded
        self._stopped = False
        self._caller_decoding = False
        self._fatal = None  # a _Failed when the runner could not run the epoch at all
        self._cond = threading.Condition()
        self._finished = threading.Event()  # the runner's thread is done with this epoch

    def __iter__(self):
        try:
            for k in range(len(self.batches)):
                item = self._take(k)
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:  # ended, failed or left early: the runner's thread moves on to the next epoch
            self.stop()

    def _take(self, k: int):
        """Batch ``k``, decoding later ones meanwhile when it is not ready and sharing is on."""
        while True:
            with self._cond:
                item = self._done[k]
                if item is not None:
                    self._done[k], self._served = None, k + 1
                    self._cond.notify_all()  # room for the runner to claim one more
                    return item
                if self._fatal is not None:
                    return self._fatal
                j = self._claim(k + self._ahead) if self._share and self._pipeline.compiled else None
                if j is None:
                    self._cond.wait()
                    continue
                self._caller_decoding = True
            self._store(j, self._decode_here(j), by_caller=True)

    def _decode_here(self, j: int):
        before = numba.get_num_threads()  # the caller's own setting, given back
        try:
            numba.set_num_threads(self._pipeline.caller_threads)
            with self._context:  # (FFCV's OS-cache context: maps the file once, then does nothing)
                return self._pipeline.decode(self.batches[j], j, self._context)
        except Exception as err:  # raised when batch j's turn comes; a Ctrl-C goes up at once
            if isinstance(err.__cause__, KeyboardInterrupt):
                # A Ctrl-C during the decode is raised at the first Python code this (the main) thread
                # runs after it: numba's boxing of the returned array calls back into Python, and
                # numba turns what that raised into a SystemError "caused by" the KeyboardInterrupt.
                raise err.__cause__ from None
            return _Failed(err)
        finally:
            numba.set_num_threads(before)

    def _claim(self, limit: int):
        """The index of the next unclaimed batch below ``limit``, now claimed; None if there is none."""
        if self._stopped or self._claimed >= min(limit, len(self.batches)):
            return None
        self._claimed += 1
        return self._claimed - 1

    def _store(self, k: int, item, by_caller: bool = False) -> None:
        with self._cond:
            self._done[k] = item
            self._caller_decoding &= not by_caller
            self._stopped |= isinstance(item, _Failed)  # the epoch ends at batch k: claim no more
            self._cond.notify_all()

    def stop(self) -> None:
        """Make the runner drop the rest of this epoch, and wait until it has, so that nothing of
        this epoch is decoded after this returns (call it from the thread that iterates)."""
        self._halt()
        if not sys.is_finalizing():  # (the runner, a daemon thread, no longer runs then)
            self._finished.wait()

    def _halt(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # -- on the runner's thread --------------------------------------------------------------------------
    def run(self) -> None:
        pipeline = self._pipeline
        try:
            context = self._context
            with context:
                while (k := self._next_for_runner()) is not None:
                    # the calling thread's own setting (a few microseconds): fewer while the caller decodes
                    numba.set_num_threads(pipeline.shared_threads if self._caller_decoding else pipeline.workers)
                    try:
                        item = pipeline.decode(self.batches[k], k, context)
                        pipeline.compiled = True
                    except BaseException as err:  # noqa: BLE001 - handed to the caller, who raises it
                        item = _Failed(err)
                    self._store(k, item)
        except BaseException as err:  # noqa: BLE001 - the context or numba refused: the caller raises it
            with self._cond:
                self._fatal = _Failed(err)
                self._cond.notify_all()
        finally:
            self._finished.set()

    def _next_for_runner(self):
        """The next batch for the runner, waiting while it is ``ahead`` batches past the caller;
        None once every batch is claimed or the epoch is stopped."""
        with self._cond:
            while True:
                if self._stopped or self._claimed >= len(self.batches):
                    return None
                k = self._claim(self._served + self._ahead)
                if k is not None:
                    return k
                self._cond.wait()


class EpochRunner:
    """Runs epochs of ``loader`` (an ``ffcv.loader.Loader``) on one thread with ``workers`` numba
    threads. ``epoch(order)`` starts decoding the batches of ``order`` (``batch_size`` ids each, the
    last one shorter) at once and returns the :class:`Epoch` that yields ``(ids, *outputs)`` per batch.
    ``buffers``: called with each batch's ids on the thread about to decode it; what it returns is
    passed as the memory argument of the pipeline's one operation (None: the pipeline gets none).
    ``share``: whether the caller may decode batches too (None: when it is safe, see ``_can_share``).
    The thread ends when the runner is garbage-collected."""

    def __init__(self, loader, workers: int, buffers=None, share: bool | None = None):
        allocations = loader.graph.allocate_memory(loader.batch_size, loader.batches_ahead + 2)
        asked = [node for kind in allocations.values() for node, memory in kind.items() if memory is not None]
        if asked:
            raise RuntimeError("EpochRunner serves pipelines that allocate no FFCV buffers; operations "
                               f"{asked} of this one ask for some")
        # the generated code still takes an argument per operation for its buffers (ours or none)
        memory_args = {f"{prefix}memory_{node}": None for prefix, kind in (("", "operation"), ("shared_", "shared"))
                       for node in allocations[kind]}
        operations = [f"memory_{node}" for node in allocations["operation"]]
        if buffers is not None and len(operations) != 1:
            raise RuntimeError(f"EpochRunner(buffers=) serves pipelines of one operation; this one has {operations}")
        self.loader, self.workers = loader, int(workers)
        self._pipeline = _Pipeline(loader, memory_args, self.workers,
                                   None if buffers is None else (operations[0], buffers))
        self._share = share
        self._jobs = queue.SimpleQueue()
        self._thread = None

    def epoch(self, order: np.ndarray) -> Epoch:
        size = self.loader.batch_size
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        context = self.loader.memory_manager.schedule_epoch(batches)
        job = Epoch(batches, self.loader.batches_ahead, self._pipeline, context, self._can_share())
        _LIVE.add(job)
        if self._thread is None:
            # the thread holds the queue only, not the runner: dropping the loader ends it
            self._thread = threading.Thread(target=_serve, args=(self._jobs,),
                                            name="kdprune-ffcv-epochs", daemon=True)
            self._thread.start()
            weakref.finalize(self, self._jobs.put, None)
        self._jobs.put(job)
        return job

    def _can_share(self) -> bool:
        """Two threads may run the pipeline at once when its memory context is FFCV's OS-cache one
        (one memory map, no per-batch state) and numba's threading layer runs parallel code from two
        threads at once (``tbb``, ``omp``; ``workqueue`` does not, and answers only once a parallel
        region has run). A one-worker pipeline is compiled without parallel loops."""
        if self._share is None:
            from ffcv.memory_managers.os_cache import OSCacheManager
            if not isinstance(self.loader.memory_manager, OSCacheManager):
                self._share = False
            elif self.workers == 1:
                self._share = True
            else:
                try:
                    self._share = numba.threading_layer() in ("tbb", "omp")
                except ValueError:  # no parallel region yet: ask again next epoch
                    return False
        return self._share


# Epochs not yet garbage-collected, stopped when the interpreter exits: an epoch left underway (a
# script that breaks out of its loop and ends) would otherwise be closed during finalization, when
# the runner's daemon thread can no longer run, and its stop() would wait for ever.
_LIVE = weakref.WeakSet()


@atexit.register
def _stop_live_epochs(seconds: float = 10.0) -> None:
    epochs = list(_LIVE)
    for epoch in epochs:  # every one first: an epoch queued behind another finishes after it
        epoch._halt()
    for epoch in epochs:
        epoch._finished.wait(seconds)


def _serve(jobs: queue.SimpleQueue) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        job.run()
        del job  # hold nothing of a loader between epochs
