"""``ffcv_runner.EpochRunner``, the one thread that runs an FFCV loader's compiled pipeline for every
epoch, on a stand-in loader whose "compiled" stage is a Python function (the real pipeline is run by
the loader tests in test_loaders.py): batches in order with their ids, one thread for all epochs,
errors reaching the caller, an epoch stopped early decoding nothing more, the thread ending with its
runner, pipelines that ask FFCV for buffers refused, each batch's buffers fetched on the thread that
decodes it; and the caller sharing the decode (each batch once and in order, failures in their turn,
a slow caller only taking finished batches, no caller decode before the runner's first batch).
"""
from __future__ import annotations

import gc
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from kdprune.loaders.ffcv_runner import EpochRunner
from timeouts import within


class Context:
    """FFCV's memory context: entered and left once per epoch, told each batch's index."""

    state = "storage state"

    def __init__(self):
        self.entered = self.exited = 0
        self.batches = []

    def __enter__(self):
        self.entered += 1
        return self

    def __exit__(self, *exc):
        self.exited += 1

    def start_batch(self, b_ix):
        self.batches.append(b_ix)


def stand_in(stage, batch_size=4, ahead=2, allocations=None):
    """An object with the parts of ``ffcv.loader.Loader`` the runner uses; ``stage(ids)`` is the
    pipeline (one operation, node 0, that asks for no buffer)."""
    context = Context()

    def code(batch_indices, storage_state, metadata, memory_0):
        assert (storage_state, metadata) == ("storage state", "metadata")
        return (stage(batch_indices) if memory_0 is None else stage(batch_indices, memory_0),)

    return SimpleNamespace(
        batch_size=batch_size, batches_ahead=ahead, code=([(code, [0])], [0]),
        reader=SimpleNamespace(metadata="metadata"), context=context,
        memory_manager=SimpleNamespace(schedule_epoch=lambda batches: context),
        graph=SimpleNamespace(allocate_memory=lambda size, slots: allocations or {"operation": {0: None}, "shared": {}}))


def test_batches_come_in_order_with_their_ids_from_one_thread():
    threads = set()

    def stage(ids):
        threads.add(threading.get_ident())
        return ids * 10

    loader = stand_in(stage, batch_size=4)
    runner = EpochRunner(loader, workers=1)
    for epoch in range(3):
        order = np.random.default_rng(epoch).permutation(10 + epoch)
        got = within(60, lambda: list(runner.epoch(order)))
        assert [len(ids) for ids, _ in got] == [4, 4, 2 + epoch]  # the last batch is the rest
        np.testing.assert_array_equal(np.concatenate([ids for ids, _ in got]), order)
        for ids, out in got:
            np.testing.assert_array_equal(out, ids * 10)
    assert len(threads) == 1 and threading.get_ident() not in threads  # one thread, not the caller's
    assert loader.context.entered == loader.context.exited == 3
    assert loader.context.batches == [0, 1, 2] * 3


def test_an_empty_epoch_ends_at_once():
    runner = EpochRunner(stand_in(lambda ids: ids), workers=1)
    assert list(runner.epoch(np.arange(0))) == []


def test_a_pipeline_error_reaches_the_caller_and_the_next_epoch_still_runs():
    def stage(ids):
        if 7 in ids:
            raise ValueError("sample 7 is damaged")
        return ids

    runner = EpochRunner(stand_in(stage, batch_size=4), workers=1)
    served = []

    def epoch():
        for ids, _ in runner.epoch(np.arange(12)):
            served.extend(ids.tolist())

    with pytest.raises(ValueError, match="sample 7 is damaged"):
        within(60, epoch)  # FFCV's own epoch thread dies on an error and its caller waits for ever
    assert served == [0, 1, 2, 3]  # the batches before the damaged one
    assert within(60, lambda: [ids.tolist() for ids, _ in runner.epoch(np.arange(4))]) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("share, taken", [(None, 1), (True, 5)])
def test_an_epoch_stopped_early_decodes_nothing_more(share, taken):
    """Without sharing (the stand-in's memory manager is not FFCV's OS-cache one) and with it."""
    decoded = []

    def stage(ids):
        time.sleep(0.002)
        decoded.append(int(ids[0]))
        return ids

    runner = EpochRunner(stand_in(stage, batch_size=1, ahead=2), workers=1, share=share)
    epoch = runner.epoch(np.arange(1000))
    batches = iter(epoch)
    for _ in range(taken):
        next(batches)
    epoch.stop()
    at_stop = len(decoded)
    assert at_stop <= taken + 2  # the batches taken and at most `ahead` past them
    time.sleep(0.05)
    assert len(decoded) == at_stop
    assert [int(ids[0]) for ids, _ in runner.epoch(np.arange(3))] == [0, 1, 2]  # and the runner goes on


def test_the_thread_ends_with_its_runner():
    runner = EpochRunner(stand_in(lambda ids: ids), workers=1)
    list(runner.epoch(np.arange(8)))
    thread = runner._thread
    assert thread.is_alive()
    del runner
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_pipeline_that_asks_ffcv_for_buffers_is_refused():
    asks = {"operation": {0: None, 3: ("buffer spec",)}, "shared": {}}
    with pytest.raises(RuntimeError, match=r"operations \[3\] of this one ask for some"):
        EpochRunner(stand_in(lambda ids: ids, allocations=asks), workers=1)


@pytest.mark.parametrize("share", [False, True])
def test_each_batch_gets_its_buffers_from_the_thread_that_decodes_it(share):
    """``buffers(ids)`` is called once per batch, on the thread about to decode it, and what it
    returns is the operation's memory argument for that batch (FFCVLoader.next_batch: counts the
    reads there and gives a new output tensor)."""
    fetched, decoded = {}, {}

    def buffers(ids):
        fetched.setdefault(int(ids[0]), []).append(threading.get_ident())
        return ("buffers of", int(ids[0]))

    def stage(ids, memory):
        decoded[int(ids[0])] = (threading.get_ident(), memory)
        time.sleep(0.002)  # (slower than the caller's loop, so that it decodes too when sharing)
        return ids

    runner = EpochRunner(stand_in(stage, batch_size=2, ahead=3), workers=1, buffers=buffers, share=share)
    got = within(60, lambda: list(runner.epoch(np.arange(40))))
    assert [int(ids[0]) for ids, _ in got] == list(range(0, 40, 2))
    assert sorted(fetched) == sorted(decoded) == list(range(0, 40, 2))
    for first, (thread, memory) in decoded.items():
        assert fetched[first] == [thread]  # once, on the thread that decoded the batch
        assert memory == ("buffers of", first)
    assert len({thread for thread, _ in decoded.values()}) == (2 if share else 1)


def test_buffers_for_a_pipeline_of_several_operations_are_refused():
    several = {"operation": {0: None, 1: None}, "shared": {}}
    with pytest.raises(RuntimeError, match=r"serves pipelines of one operation"):
        EpochRunner(stand_in(lambda ids: ids, allocations=several), workers=1, buffers=lambda ids: None)


def test_a_thread_count_numba_refuses_reaches_the_caller():
    import numba
    runner = EpochRunner(stand_in(lambda ids: ids), workers=numba.config.NUMBA_NUM_THREADS + 1)
    with pytest.raises(ValueError):
        within(60, lambda: list(runner.epoch(np.arange(4))))


def test_a_caller_faster_than_the_decode_decodes_batches_too_and_gets_them_in_order():
    """With sharing on, a caller waiting for a batch decodes the next unclaimed one itself: both
    threads decode, every batch exactly once, yielded in order, never more than ``ahead`` batches
    claimed past the caller's."""
    import numba
    threads, claimed_past = {}, []
    runner_box = {}

    def stage(ids):
        threads.setdefault(threading.get_ident(), []).append(int(ids[0]))
        epoch = runner_box["epoch"]
        claimed_past.append(epoch._claimed - epoch._served)
        time.sleep(0.003)  # slower than the caller's loop
        return ids * 10

    runner = EpochRunner(stand_in(stage, batch_size=2, ahead=3), workers=1, share=True)
    caller_threads = numba.get_num_threads()
    order = np.random.default_rng(1).permutation(100)

    def one_epoch():
        runner_box["epoch"] = epoch = runner.epoch(order)
        return list(epoch), threading.get_ident()

    got, caller = within(60, one_epoch)
    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in got]), order)
    for ids, out in got:
        np.testing.assert_array_equal(out, ids * 10)
    assert len(threads) == 2 and caller in threads  # the runner's thread and the caller
    assert sorted(sum(threads.values(), [])) == sorted(int(ids[0]) for ids, _ in got)  # each batch once
    assert max(claimed_past) <= 3
    assert numba.get_num_threads() == caller_threads  # the caller's numba setting is given back


def test_a_batch_the_caller_decoded_that_fails_raises_in_its_turn():
    def stage(ids):
        time.sleep(0.002)
        if 9 in ids:
            raise ValueError("sample 9 is damaged")
        return ids

    runner = EpochRunner(stand_in(stage, batch_size=1, ahead=4), workers=1, share=True)
    served = []

    def epoch():
        for ids, _ in runner.epoch(np.arange(20)):
            served.extend(ids.tolist())

    with pytest.raises(ValueError, match="sample 9 is damaged"):
        within(60, epoch)
    assert served == list(range(9))
    assert within(60, lambda: [ids.tolist() for ids, _ in runner.epoch(np.arange(3))]) == [[0], [1], [2]]


def test_a_ctrl_c_numba_wrapped_while_the_caller_decodes_stops_the_epoch_as_a_ctrl_c():
    """A Ctrl-C that lands while the caller decodes is raised at the next Python code the main
    thread runs, which is numba's boxing of the decoded array: numba hands it back as a SystemError
    caused by the KeyboardInterrupt. The caller raises the KeyboardInterrupt, at once (not as a
    failed batch in its turn), and the next epoch runs."""
    caller = threading.get_ident()

    def stage(ids):
        time.sleep(0.002)  # slower than the caller's loop: it decodes batches too
        if threading.get_ident() == caller and ids[0] >= 6:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as ctrl_c:
                raise SystemError("CPUDispatcher(decode) returned a result with an exception set") from ctrl_c
        return ids

    runner = EpochRunner(stand_in(stage, batch_size=1, ahead=4), workers=1, share=True)
    served = []
    with pytest.raises(KeyboardInterrupt):
        for ids, _ in runner.epoch(np.arange(40)):
            served.extend(ids.tolist())
    assert served == list(range(len(served))) and len(served) < 40
    assert [ids.tolist() for ids, _ in runner.epoch(np.arange(3))] == [[0], [1], [2]]


def test_a_caller_slower_than_the_decode_takes_finished_batches():
    """A training step longer than a batch's decode: the runner stays ahead, so past the epoch's
    first batches (nothing is decoded yet when it starts) the caller only takes finished ones."""
    by_caller = []
    caller = {}

    def stage(ids):
        if threading.get_ident() == caller.get("id"):
            by_caller.append(int(ids[0]))
        time.sleep(0.001)
        return ids

    runner = EpochRunner(stand_in(stage, batch_size=1, ahead=3), workers=1, share=True)

    def one_epoch():
        caller["id"] = threading.get_ident()
        served = []
        for ids, _ in runner.epoch(np.arange(40)):
            time.sleep(0.01)  # the training step
            served.append(int(ids[0]))
        return served

    assert within(60, one_epoch) == list(range(40))
    assert all(k < 3 for k in by_caller), by_caller


def test_the_caller_decodes_only_once_the_runner_has_run_a_batch():
    """numba compiles the pipeline on the thread that first runs it, and a Ctrl-C inside that compile
    is swallowed by an LLVM callback (the process hung): so the runner's thread runs the first batch
    (the compile, here a slow first call) before the caller decodes any."""
    calls = []
    caller = {}

    def stage(ids):
        start = time.perf_counter()
        if not calls:
            time.sleep(0.2)  # the compile
        calls.append((threading.get_ident() == caller.get("id"), start, time.perf_counter()))
        return ids

    runner = EpochRunner(stand_in(stage, batch_size=1, ahead=4), workers=1, share=True)

    def epochs():
        caller["id"] = threading.get_ident()
        return [list(runner.epoch(np.arange(30))) for _ in range(2)]

    within(60, epochs)
    by_runner = [c for c in calls if not c[0]]
    first_end = by_runner[0][2]
    assert all(start >= first_end for by_caller, start, _ in calls if by_caller)
    assert any(by_caller for by_caller, _, _ in calls)  # and shares after that
