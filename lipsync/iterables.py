"""Iterables in a pipeline: `background` overlaps a producer with its consumer (an iterable computed in a
thread, a bounded queue between); `batched` groups items into lists.

`background` is used where the producer's work releases the GIL (video decoding, OpenCV resizing, GPU waits):
inference's decode -> generate -> paste pipeline, and preprocessing's crop batches while the GPU encodes.
"""
from __future__ import annotations

import itertools
import queue
import threading
from typing import Iterable, Iterator


def background(items: Iterable, maxsize: int = 2) -> Iterator:
    """Produce `items` in a background thread (bounded queue); exceptions re-raise in the consumer."""
    done = object()
    q: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()

    def offer(item) -> bool:
        """Queue `item` unless the consumer has stopped (never blocks past that: the consumer joins us)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not offer(item):
                    return
            offer(done)
        except BaseException as err:  # handed to the consumer
            offer(err)

    thread = threading.Thread(target=produce, daemon=True, name="background")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch
