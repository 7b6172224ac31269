"""In-order delivery of queued calls to a server that may be away for a while (generic: the MLflow layout
lives in :mod:`mcel_search.search.tracking`).

:class:`RetryingSender` queues calls ``(method, args)`` and hands them, in order, to ``deliver``. When a call
fails with an error that ``is_transient`` calls an outage, it stays first in the queue and the sender
backs off (doubling, :data:`BACKOFF_S`) instead of blocking its caller; the queue goes out in order once
the server answers. A caller that must not go on without delivery (a full queue, the end of a run) waits
up to :data:`FLUSH_TIMEOUT_S` and then gets ``unavailable(pending)``, one line. Any other error is raised
to the caller.

With ``background=True`` one thread delivers and the caller only appends (its events return at once);
an error the thread meets is raised at the caller's next ``enqueue`` or ``flush``. With
``background=False`` the caller delivers itself. A pickled sender (Ray Tune snapshots its callbacks)
comes back empty, without its thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds a caller waits for an unreachable server when the queue is full or a run ends.
FLUSH_TIMEOUT_S = float(os.environ.get("MCEL_MLFLOW_FLUSH_TIMEOUT_S", "600"))
#: Backoff between attempts while the server is unreachable (seconds: first, largest; doubling).
BACKOFF_S = (0.5, 10.0)


class RetryingSender:
    """Queue of calls delivered in order through ``deliver(method, args)``; see the module docstring.

    Args:
        deliver: makes one call (raises what the server answered).
        is_transient: whether an error means "server unreachable or overloaded" (retry later).
        unavailable: the exception raised when the queue still holds ``pending`` calls at the deadline.
        target: how log lines name the server (credentials already masked).
        background: one delivering thread (True) or delivery by the caller (False).
        attempt: a context manager around each delivery (e.g. one HTTP attempt, no client retries).
        thread_name: the delivering thread's name.
    """

    #: Calls kept while the server is unreachable; when full, the caller waits for the server.
    max_pending = 10_000

    def __init__(
        self,
        deliver: Callable[[str, tuple], Any],
        *,
        is_transient: Callable[[BaseException], bool],
        unavailable: Callable[[int], BaseException],
        target: str,
        background: bool = True,
        attempt: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        thread_name: str = "mcel-sender",
    ) -> None:
        self.deliver = deliver
        self.is_transient = is_transient
        self.unavailable = unavailable
        self.target = target
        self.background = background
        self.attempt = attempt
        self.thread_name = thread_name
        self._reset()
        self._init_thread_state()

    def _reset(self) -> None:
        self._pending: deque[tuple[str, tuple]] = deque()
        self._retry_at = 0.0
        self._backoff = BACKOFF_S[0]
        self._down_since: float | None = None

    def _init_thread_state(self) -> None:
        self._cond = threading.Condition()  # guards _error, _busy, _closing; wakes the sender and waiters
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None  # a non-outage error the thread met, raised in the caller
        self._busy = False  # the thread is between taking a call and recording its outcome
        self._closing = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_cond", "_thread", "_error", "_busy", "_closing"):
            state.pop(name, None)
        state.update(_pending=deque(), _retry_at=0.0, _backoff=BACKOFF_S[0], _down_since=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_thread_state()

    @property
    def pending(self) -> int:
        """Calls waiting to be delivered."""
        return len(self._pending)

    def enqueue(self, method: str, args: tuple) -> None:
        """Queue one call; with ``background=False`` deliver at once (as far as the server lets). An error a
        background delivery met is raised here, at the caller's next call (this call is queued all the same)."""
        self._pending.append((method, args))  # deque.append: safe against the sender's popleft
        full = len(self._pending) > self.max_pending
        if full:
            logger.warning("%s: buffer full (%d calls): waiting for the server", self.target, self.pending)
        if not self.background:
            self._send(final=full)
            return
        self._start_sender()
        with self._cond:
            self._cond.notify_all()
        if full:
            self.flush(final=True)
        self._raise_sender_error()  # this event is queued all the same

    def flush(self, final: bool = False) -> None:
        """Send the pending calls in order. Without ``final`` one attempt (none during the backoff) and
        return when the server is unreachable; with ``final`` retry until :data:`FLUSH_TIMEOUT_S` and then
        raise ``unavailable(pending)``. Errors other than an unreachable server are raised.

        In background mode the sender thread does the sending and this waits: until the queue is empty,
        or (without ``final``) until the sender backs off from an unreachable server.
        """
        if not self.background:
            self._send(final)
            return
        self._raise_sender_error()
        if not self._pending:
            return
        self._start_sender()
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        with self._cond:
            self._cond.notify_all()
            while (self._pending or self._busy) and self._error is None:
                now = time.monotonic()
                if now >= deadline or (not final and self._retry_at > now and not self._busy):
                    break
                self._cond.wait(timeout=min(0.5, deadline - now))
        self._raise_sender_error()
        if final and self._pending:
            raise self.unavailable(self.pending)

    def close(self) -> None:
        """Stop the sender thread once the queue is empty (or the server unreachable); idempotent."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread.join(timeout=5.0)
        self._thread = None

    def _start_sender(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._closing = False
            self._thread = threading.Thread(target=self._sender, name=self.thread_name, daemon=True)
            self._thread.start()

    def _raise_sender_error(self) -> None:
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _sender(self) -> None:
        """The background thread: send pending calls in order; sleep through the backoff; exit on close."""
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing and (not self._pending or self._retry_at > time.monotonic()):
                    return
                wait = self._retry_at - time.monotonic()
                if wait > 0:
                    self._cond.wait(timeout=wait)
                    continue
                self._busy = True
            try:
                self._send(final=False)
            except Exception as exc:  # not an outage: the driver raises it at its next event or flush
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _send(self, final: bool) -> None:
        """The sending loop: calls in order; without ``final`` it returns at the first outage (or during
        the backoff), with ``final`` it retries until :data:`FLUSH_TIMEOUT_S`. Other errors are raised."""
        if not self._pending:
            return
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while self._pending:
            now = time.monotonic()
            if now < self._retry_at:
                if not final:
                    return
                if now >= deadline:
                    break
                time.sleep(min(self._retry_at, deadline) - now)
                continue
            method, args = self._pending[0]
            try:
                with self.attempt():
                    self.deliver(method, args)
            except Exception as exc:
                if not self.is_transient(exc):
                    self._pending.popleft()
                    raise
                if self._down_since is None:
                    self._down_since = now
                    logger.warning(
                        "%s unreachable (%s): buffering, %d calls pending",
                        self.target,
                        " ".join(str(exc).split())[:200],
                        self.pending,
                    )
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_S[1])
                if not final:
                    return
                if time.monotonic() >= deadline:
                    break
                continue
            self._pending.popleft()
            if self._down_since is not None:
                logger.warning(
                    "%s back after %.0f s; flushing %d buffered calls",
                    self.target,
                    time.monotonic() - self._down_since,
                    self.pending,
                )
                self._down_since = None
            self._backoff = BACKOFF_S[0]
            self._retry_at = 0.0
        if self._pending:
            raise self.unavailable(self.pending)
