"""Batches made ready ahead of the step that needs them: read, packed, split and put on the devices by a thread.

The train step is dispatched asynchronously, so while the device runs step N the main thread is free; without
prefetching it would then read, pack and copy batch N + 1 and the device would wait for that. Here a background
thread does all of it ``depth`` batches ahead (a bounded queue: at most ``depth`` batches wait on the devices).

Checkpoints must record the data position of the last batch a *step consumed*, not of the last one prefetched, or
a resume would skip the batches that were waiting: the thread reads the iterator's state after each batch and
hands it over with the batch, and ``get_state`` answers with the state that came with the batch taken last.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

_DONE = object()


class Prefetcher:
    """``next()`` gives ``prepare(raw_batch)`` for the raw batches of ``iterator`` (a grain iterator: its
    ``get_state``/``set_state`` are the data position), computed by a thread up to ``depth`` batches ahead.
    ``get_state``/``set_state`` are the position after the last batch taken, so a checkpoint handler can
    treat this object as the iterator."""

    def __init__(self, iterator: Iterator, prepare: Callable, depth: int = 2):
        self.iterator, self.prepare, self.depth = iterator, prepare, depth
        self._state = iterator.get_state()
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self, out: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                item = self.prepare(next(self.iterator))
                item = (item, self.iterator.get_state())
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # re-raised by next() in the main thread
            out.put((_DONE, error))

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(
            target=self._run, args=(self._queue, self._stop), name="hrm-prefetch", daemon=True
        )
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is None:
            self._start()
        item, state = self._queue.get()
        if item is _DONE:
            self.close()
            raise state
        self._state = state
        return item

    def get_state(self):
        return self._state

    def set_state(self, state) -> None:
        """Move to ``state`` (a checkpoint's position): whatever was prefetched is dropped."""
        self.close()
        self.iterator.set_state(state)
        self._state = state

    def start_prefetch(self) -> None:
        """grain's checkpoint handler may ask an iterator to start reading after a restore: start the thread."""
        if self._thread is None:
            self._start()

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is preparing) and put the iterator back at the last batch
        taken, so the batches prefetched but never taken come again."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None
            self.iterator.set_state(self._state)
