"""Admission to model work: a bounded queue with a deadline, apart from health and static files.

Waitress runs every request on one thread pool. If model work could take all of its threads, a
health probe would wait behind it (17.7 s was measured), so the pool is sized
`workers + queue + spare`: at most `workers` requests run model work at once, at most `queue`
more wait for a turn, and the spare threads are always free for /api/health, /api/model and
the front end. A request that finds the queue full, or whose deadline passes while it waits, is
answered 503 with Retry-After at once; one whose client has hung up is dropped unanswered.
With micro-batching (--max-batch > 1) a request sets its turn aside while its image waits for
the shared model call (cxr.inference.microbatch), so up to `workers + queue` images can share
one call while decoding stays `workers` at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cxr.errors import ClientGone, ServerBusy

SPARE_THREADS = 4  # for health, model info, OpenAPI and static files; never model work
_POLL_S = 0.25  # how often a waiting request checks that its client is still there


class ModelQueue:
    """At most `workers` requests in model work, `queue` more waiting, each with a deadline."""

    def __init__(self, workers: int, queue: int, deadline_s: float):
        self.workers, self.queue, self.deadline_s = workers, queue, deadline_s
        self._turns = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting

    @property
    def threads(self) -> int:
        """Waitress threads this queue needs so that health never waits behind it."""
        return self.workers + self.queue + SPARE_THREADS

    @property
    def admitted(self) -> int:
        return self._admitted

    @contextmanager
    def turn(
        self, received: float | None = None, client_gone: Callable[[], bool] | None = None
    ) -> Iterator[Turn]:
        """Wait for a turn at the model (ServerBusy when full or too late; ClientGone)."""
        at = (received or time.monotonic()) + self.deadline_s
        deadline = Turn(at, client_gone, self._turns)
        with self._lock:
            if self._admitted >= self.workers + self.queue:
                raise ServerBusy(
                    f"the server is busy: {self.workers} request(s) running and {self.queue} "
                    "waiting; retry in a few seconds",
                    retry_after=max(1, round(self.deadline_s / 4)),
                )
            self._admitted += 1
        try:
            deadline.take()
            try:
                yield deadline
            finally:
                deadline.give_back()
        finally:
            with self._lock:
                self._admitted -= 1


class Deadline:
    """When a request's time is up; `check` raises ServerBusy after it, ClientGone if hung up."""

    def __init__(self, at: float, client_gone: Callable[[], bool] | None = None):
        self.at = at
        self._client_gone = client_gone

    @property
    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self, where: str) -> None:
        if self._client_gone is not None and self._client_gone():
            raise ClientGone(f"the client disconnected {where}")
        if self.left <= 0:
            raise ServerBusy(f"the request's deadline passed {where}; retry later", retry_after=5)


class Turn(Deadline):
    """A request's turn at the model, with its deadline. `aside` gives the turn to the next
    request while this one's image waits in the micro-batcher (decoding, checks and encoding
    stay at most `workers` at once; the batched forward pass is one thread's work)."""

    def __init__(self, at: float, client_gone, turns: threading.BoundedSemaphore):
        super().__init__(at, client_gone)
        self._turns = turns
        self._held = False

    def take(self, deadline: bool = True) -> None:
        """Wait for the turn; `deadline=False` after the model answered (only a client that
        hung up stops it then: the costly part is done, as on the unbatched path)."""
        while not self._turns.acquire(timeout=min(_POLL_S, max(self.left, 0.001))):
            self._check(deadline)
        self._held = True
        self._check(deadline)

    def _check(self, deadline: bool) -> None:
        if deadline:
            self.check("while waiting for the model")
        elif self._client_gone is not None and self._client_gone():
            raise ClientGone("the client disconnected while waiting to encode its answer")

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._turns.release()

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Not holding the turn while inside; taken again after (not after an error)."""
        self.give_back()
        yield
        self.take(deadline=False)
