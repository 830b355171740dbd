"""The write turns of one process on SQLite: writers wait here, in order, for the one write lock.

First come, first served, with one exception: a writer someone is waiting on (a webhook's
record, which answers the platform as soon as it has written) goes ahead of the writers queued,
at most `MAX_AHEAD` times in a row before the longest-waiting other writer has its turn. A
platform that sends one delivery at a time waits for each answer: behind a queue of group
commits, claims and observations (several ms each under load) every answer waited for all of
them, and the platform's backlog grew with each. Behind the current holder alone it waits for one.

The turn is handed over directly: `release` gives it to the next waiter (whose `acquire` then
returns holding it) rather than freeing it for whoever asks next, so no writer arriving later
slips in front of one already chosen (an urgent one goes ahead of those still queued, by design).
A waiter cancelled after it was handed the turn passes it on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

# Waiters someone is waiting on taken ahead of the others in a row, at most. Records are one
# short statement each and a platform sends a bounded number at once, so this only matters
# under a flood; it keeps the other writers moving then.
MAX_AHEAD = 4


class WriteTurns:
    def __init__(self) -> None:
        self._held = False
        self._ahead = 0  # urgent waiters given the turn in a row while others waited
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._held

    async def acquire(self, *, urgent: bool = False) -> None:
        """Wait for the turn; `urgent` for a writer someone waits on (see the module docstring)."""
        if not self._held:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._others
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the turn, then cancelled: the next one has it
            elif waiter in queue:  # not already passed over by a release
                queue.remove(waiter)
            raise

    def release(self) -> None:
        """End this turn: the next waiter has it (see the module docstring), or nobody."""
        if not self._held:
            raise RuntimeError("a write turn released that was not held")
        while True:
            if self._urgent and (self._ahead < MAX_AHEAD or not self._others):
                waiter, urgent = self._urgent.popleft(), True
            elif self._others:
                waiter, urgent = self._others.popleft(), False
            else:
                self._held, self._ahead = False, 0
                return
            if waiter.done():  # one cancelled meanwhile is passed over, and counts for nothing
                continue
            # Counted only for a waiter that gets the turn: urgent ones in a row while others wait.
            self._ahead = (self._ahead + 1 if self._others else 0) if urgent else 0
            waiter.set_result(None)
            return

    def urgent(self) -> UrgentTurn:
        """`async with turns.urgent():` a turn ahead of the queue."""
        return UrgentTurn(self)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class UrgentTurn:
    def __init__(self, turns: WriteTurns) -> None:
        self._turns = turns

    async def __aenter__(self) -> None:
        await self._turns.acquire(urgent=True)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._turns.release()
