"""A guard for tests of code that can hang (a loader thread that stops serving): the test fails
with a message instead of stopping the suite."""
from __future__ import annotations

import threading


def within(seconds, fn, hang="no answer: the runner stopped serving"):
    """``fn()``'s result, run in a thread joined for ``seconds``; an ``AssertionError`` saying
    ``hang`` if it is still running then, and ``fn``'s own error re-raised here."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            result["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), f"{hang} (within {seconds} s)"
    if "error" in result:
        raise result["error"]
    return result["value"]
