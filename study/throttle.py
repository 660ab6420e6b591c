"""Slowing down guessing: a client that keeps sending wrong codes must wait before trying again.

Invite codes carry 128 random bits, so guessing one is hopeless anyway; the throttle keeps a
weak admin token, or a script hammering the sign-in, from trying many values quickly. It
refuses at once instead of sleeping, so a guesser never holds one of the queue's workers.

State lives in memory, per process, for at most ``max_clients`` clients (the least recently
seen are forgotten first): a restart forgets every count, which only helps whoever waits.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from study.db import StudyError

WRONG_CODES = (
    "Too many wrong codes from this browser; wait {wait} s and try again. Ask the study "
    "team if your code keeps being refused."
)


class TooManyAttemptsError(StudyError):
    """Too many wrong codes from one client; ``retry_after`` is in seconds.

    ``message`` may hold ``{wait}``, the whole seconds to wait.
    """

    def __init__(self, retry_after: float, message: str = WRONG_CODES):
        self.retry_after = retry_after
        super().__init__(message.format(wait=math.ceil(retry_after)))


@dataclass
class _Record:
    failures: int
    last_failure: float
    locked_until: float


class Throttle:
    """After ``free`` wrong attempts within ``window`` seconds a client waits ``base_delay``
    seconds before it may try again; each further wrong attempt doubles the wait, up to
    ``max_delay``.

    ``clock`` (seconds, monotonic) is replaceable so tests need not wait. A client is any
    hashable key, e.g. an IP address; ``None`` (a call from this process) is never throttled.
    ``message`` is what a locked-out client is told (see :class:`TooManyAttemptsError`).
    """

    def __init__(
        self,
        *,
        free: int = 5,
        window: float = 600.0,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        message: str = WRONG_CODES,
    ):
        if free < 1 or window <= 0 or base_delay <= 0 or max_delay < base_delay:
            raise ValueError(
                "Throttle needs free >= 1, window > 0 and 0 < base_delay <= max_delay; "
                f"got free={free}, window={window}, base_delay={base_delay}, "
                f"max_delay={max_delay}."
            )
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1; got {max_clients}.")
        self.free = free
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_clients = max_clients
        self.clock = clock
        self.message = message
        self._records: OrderedDict[Hashable, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def check(self, client: Hashable | None) -> None:
        """Raise :class:`TooManyAttemptsError` while ``client`` is locked out."""
        if client is None:
            return
        with self._lock:
            record = self._current(client)
            wait = record.locked_until - self.clock() if record else 0.0
        if wait > 0:
            raise TooManyAttemptsError(wait, self.message)

    def failed(self, client: Hashable | None) -> float:
        """Count a wrong attempt; return how long ``client`` is now locked out (0 if not)."""
        if client is None:
            return 0.0
        now = self.clock()
        with self._lock:
            record = self._current(client) or _Record(0, now, now)
            record.failures += 1
            record.last_failure = now
            extra = record.failures - self.free
            delay = 0.0 if extra < 0 else min(self.base_delay * 2.0**extra, self.max_delay)
            record.locked_until = now + delay
            self._records[client] = record
            self._records.move_to_end(client)
            while len(self._records) > self.max_clients:
                self._records.popitem(last=False)
        return delay

    def succeeded(self, client: Hashable | None) -> None:
        """A right code: forget ``client``'s wrong ones."""
        with self._lock:
            self._records.pop(client, None)

    @contextlib.contextmanager
    def guard(self, client: Hashable | None, *wrong: type[BaseException]) -> Iterator[None]:
        """Refuse a locked-out client, then run the block; an exception of a ``wrong`` type
        counts as a wrong attempt, finishing without one as a right one."""
        self.check(client)
        try:
            yield
        except wrong:
            self.failed(client)
            raise
        self.succeeded(client)

    def _current(self, client: Hashable) -> _Record | None:
        """The client's record, or None once its failures are older than the window."""
        record = self._records.get(client)
        if record is None:
            return None
        now = self.clock()
        if now - record.last_failure > self.window and now >= record.locked_until:
            del self._records[client]
            return None
        return record
