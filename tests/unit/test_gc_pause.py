"""The projections' runner pauses Python's cycle collector around batches, and pauses from
several threads nest: the collector is back on once the last one ends, and stays off if it
was off before the first."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from projections.runner import gc_paused


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_pauses_nest_across_threads(collector_on: None) -> None:
    inside, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other() -> None:
        with gc_paused():
            inside.set()
            release.wait(5)
            seen.append(gc.isenabled())

    thread = threading.Thread(target=other)
    with gc_paused():
        thread.start()
        assert inside.wait(5)
        seen.append(gc.isenabled())
    seen.append(gc.isenabled())  # the other thread's pause still holds
    release.set()
    thread.join(5)
    assert seen == [False, False, False]
    assert gc.isenabled()


def test_a_pause_that_raises_still_ends(collector_on: None) -> None:
    with pytest.raises(ZeroDivisionError), gc_paused():
        assert not gc.isenabled()
        _ = 1 / 0
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off(collector_on: None) -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()
