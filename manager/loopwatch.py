"""A test aid: with PASSENGER_LITE_DEBUG_LOOP=SECONDS, log every stall of the event loop longer than that, with where it was stuck.

Off (the default) it costs nothing: the coroutine runs as is. On, a 0.1 s tick on the loop stamps
the time; a thread looks at the stamp, and when the tick is late by more than SECONDS it takes the
main thread's stack (what blocks the loop); the next tick logs one WARNING line
`event loop blocked for 1.23 s` with that stack. Works on uvloop and asyncio alike (asyncio's
debug mode would cost a traceback per callback and, on uvloop, misses protocol callbacks). The
integration harness turns it on and fails a test whose manager logged such a line.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback

ENV = "PASSENGER_LITE_DEBUG_LOOP"
TICK = 0.1
MARK = "event loop blocked for"

log = logging.getLogger("passenger_lite.manager")


async def watched(coro):
    """Run coro; with $PASSENGER_LITE_DEBUG_LOOP set, under a LoopWatch."""
    limit = os.environ.get(ENV)
    if not limit:
        return await coro
    watch = LoopWatch(asyncio.get_running_loop(), float(limit))
    try:
        return await coro
    finally:
        watch.close()


class LoopWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float):
        self.loop = loop
        self.limit = limit
        self.beat = time.monotonic()
        self.stack: str | None = None
        self._main = threading.get_ident()
        self._stop = threading.Event()
        self._handle = loop.call_later(TICK, self._tick)
        self._thread = threading.Thread(target=self._look, name="loopwatch", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        now = time.monotonic()
        late = now - self.beat - TICK
        if late > self.limit:
            log.warning("%s %.2f s%s", MARK, late, f" in:\n{self.stack}" if self.stack else "")
        self.stack = None
        self.beat = now
        self._handle = self.loop.call_later(TICK, self._tick)

    def _look(self) -> None:
        while not self._stop.wait(TICK):
            if self.stack is None and time.monotonic() - self.beat - TICK > self.limit:
                frame = sys._current_frames().get(self._main)
                if frame is not None:
                    self.stack = "".join(traceback.format_stack(frame)[-8:]).rstrip()

    def close(self) -> None:
        self._handle.cancel()
        self._stop.set()
        self._thread.join()
