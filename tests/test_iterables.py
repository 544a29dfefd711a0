"""lipsync.iterables: background() keeps items in order, re-raises the producer's exception in the consumer and
never hangs on an early stop; batched() groups items."""
import threading
import time

import pytest

from lipsync.iterables import background, batched


def test_items_arrive_in_order_and_errors_reach_the_consumer():
    assert list(background(iter(range(50)), maxsize=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("decode failed")

    items = background(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="decode failed"):
        next(items)


def test_closing_early_stops_the_producer_even_if_it_fails_later():
    """The consumer stops while the queue is full and the producer then raises: close() must return (the
    producer drops its error instead of waiting forever for room in the queue)."""
    def slow_then_fail():
        yield 0
        yield 1  # fills the queue (maxsize 1) while the consumer still holds 0
        time.sleep(0.3)  # the consumer closes meanwhile
        raise RuntimeError("late failure")

    before = threading.active_count()
    items = background(slow_then_fail(), maxsize=1)
    assert next(items) == 0
    time.sleep(0.1)  # let the producer fill the queue
    start = time.perf_counter()
    items.close()
    assert time.perf_counter() - start < 5
    assert threading.active_count() == before


def test_batched_groups_items_in_order():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []
