"""Concurrent single-image requests answered by one model call: a micro-batcher.

A server thread hands its preprocessed image to `MicroBatcher.forward` and waits; one model
thread takes up to `max_batch` waiting images, or whatever arrived within `wait_s` of the first,
stacks them, runs ONE forward pass and gives each caller its own row. On a CPU one call on N
images costs much less than N calls on one (the weights are read once, the kernels run wide), so
at 16 clients the server answers more requests per second than at 4 instead of fewer.

The caller keeps its guarantees while it waits for a batch: `check` (its deadline, its client
still there) is polled, and an item whose caller gave up is left out of the next batch, never
computed. Once its batch is running it is answered, as a request's own forward pass would be.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MicroBatcher", "Waiter"]

_POLL_S = 0.05  # how often a waiting caller checks its deadline and its client


class Waiter:
    """What a caller tells the batcher while it waits: no deadline, nothing to give back.

    The web server passes its request's turn at the model: `check` raises when the deadline
    passed or the client hung up, and `aside` hands the turn to another request meanwhile."""

    def check(self, where: str) -> None:
        """Raise to stop waiting (the item is then dropped from the batch)."""

    def aside(self) -> AbstractContextManager:
        """While inside, the caller holds nothing another request could use."""
        return contextlib.nullcontext()


@dataclass
class _Item:
    pixels: np.ndarray  # (S, S) uint8
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False  # the caller gave up before its batch began: not computed
    started: threading.Event = field(default_factory=threading.Event)  # in a model call now
    probs: np.ndarray | None = None
    features: np.ndarray | None = None
    error: BaseException | None = None


class MicroBatcher:
    """One model thread answering many callers, up to `max_batch` images per forward pass.

    `forward(pixels)`: uint8 (N, S, S) -> (probabilities (N, K), features (N, F) or None), the
    engine's `predict_with_features`. `calls` counts forward passes (tests and benchmarks)."""

    def __init__(
        self,
        forward: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
        max_batch: int = 16,
        wait_s: float = 0.005,
    ):
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0, got {max_batch}, {wait_s}")
        self._forward = forward
        self.max_batch, self.wait_s = max_batch, wait_s
        self.calls = 0
        self.batch_sizes: list[int] = []  # the last 1,000 batches' sizes
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None

    def forward(
        self, pixels: np.ndarray, waiter: Waiter | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One image's (1, K) probabilities and (1, F) features (or None), from a shared call."""
        waiter = waiter or Waiter()
        if pixels.ndim == 3:
            pixels = pixels[0]
        item = _Item(np.ascontiguousarray(pixels))
        waiter.check("before the model")
        self._ensure_thread()
        self._queue.put(item)
        with waiter.aside():
            try:
                while not item.started.wait(_POLL_S):
                    waiter.check("while waiting for the model")
            except BaseException:
                item.cancelled = True  # the model thread leaves it out, if it has not begun
                raise
            # once computing, it is answered, as a request's own forward pass would be
            item.done.wait()
        if item.error is not None:
            raise item.error
        return item.probs, item.features

    def _ensure_thread(self) -> None:
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="cxr-microbatch", daemon=True
                )
                self._thread.start()

    def _take(self) -> list[_Item]:
        """The first waiting item (blocking), then up to max_batch - 1 more within wait_s."""
        items = [self._queue.get()]
        until = time.monotonic() + self.wait_s
        while len(items) < self.max_batch:
            left = until - time.monotonic()
            try:
                items.append(
                    self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        while True:
            items = [item for item in self._take() if not item.cancelled]
            for item in items:
                item.started.set()
            if items:
                self._answer(items)

    def _answer(self, items: list[_Item]) -> None:
        self.calls += 1
        self.batch_sizes = [*self.batch_sizes[-999:], len(items)]
        try:
            probs, features = self._forward(np.stack([item.pixels for item in items]))
        except BaseException as exc:  # noqa: BLE001 - each caller gets the error, the thread lives
            for item in items:
                item.error = exc
                item.done.set()
            return
        for i, item in enumerate(items):
            item.probs = probs[i : i + 1]
            item.features = None if features is None else features[i : i + 1]
            item.done.set()
