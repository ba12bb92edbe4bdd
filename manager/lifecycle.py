"""An app's lifecycle: backoff, retry, crashes and hangs, drains, recycling, rolling restart, sweeps.

`Lifecycle` is the half of AppPool (manager/pool.py) that decides what happens to the workers
over time; pool.py keeps checkout, the wait queue and spawn admission (`spawn`, `ensure_min`,
`_spawn_one`), and both write state only through `AppPool._set_state` and `Worker.set_state`.

Issue 4: failed starts back off exponentially with jitter and, after FAIL_LIMIT in a row, the
app is marked failed (503 with its error page) and retried later; crashed workers are replaced;
idle workers stop after `idle_timeout` down to `min_processes`; workers are recycled after
`max_requests` or past `memory_limit`; restarts are rolling (the new worker is ready before the
old one stops taking requests, then the old one drains).

Issue 11: a worker is out of rotation and replaced the same way whichever path notices first:
its exit, a request that cannot reach it, a response that times out, an idle worker that does
not answer a liveness probe. An exit within `min_uptime` of becoming ready is a failed start
(supervisor's startsecs). A drain ends at shutdown_timeout: the worker is killed then. A rolling
restart waits for a free slot under max_pool_size, else replaces the worker in place.
"""
from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from typing import TYPE_CHECKING

from .spawnfail import StartFailure, describe_exit, hints_for
from .states import AppState, WorkerState

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("passenger_lite.manager")
W = WorkerState
FAIL_LIMIT = 5          # failed starts in a row before the app is marked failed
BACKOFF_BASE = 0.5      # seconds; doubles per failure, with +-25 % jitter
BACKOFF_MAX = 30.0
FAILED_RETRY = 60.0     # a failed app is tried again after this long (or on restart)
MEMORY_CHECK_EVERY = 2.0
MEMORY_CHECK_AFTER_REQUEST = 0.05  # memory_limit: a worker's RSS is read after a request, at most this often
DRAIN_KILL_AFTER = 3.0  # past shutdown_timeout: the proxy closes its WebSockets (1001) and timeouts first
LIVENESS_IDLE = 5.0     # an idle worker is probed after this long without a request, and this often
LIVENESS_TIMEOUT = 10.0  # ...and must answer within response_timeout, at most this
CONFIRM_EXIT = 1.0      # a worker reported unreachable or hung: wait this long to see whether it exited
SLOT_WAIT_EXTRA = DRAIN_KILL_AFTER + 2.0  # a restart waits shutdown_timeout plus this for a slot beside the old worker


class Lifecycle:
    """AppPool's lifecycle methods (mixed into AppPool: they use its workers, queue and state)."""

    # ------------------------------------------------------------------ failed starts, backoff

    def _start_failed(self, f: StartFailure, after_ready: bool = False) -> None:
        """A failed start: back off, or mark the app failed. `after_ready`: the worker booted and
        exited within min_uptime; until the app is marked failed, requests wait for the next try
        (it may have been one crash) instead of getting 503 at once as for a boot failure."""
        if self.stopping:  # stopped while starting: not a failure of the app
            return
        self.failures += 1
        self.failed_starts += 1
        self.last_failure = f
        # its output was printed as it came (smoke shows it in its table): not again here
        log.error("%s: worker failed to start: %s%s", self.name, f.message,
                  f"; the same {len(f.output.splitlines())} line(s) of output as the last failed start "
                  "(not shown again)" if f.repeated else "")
        if self.failures >= FAIL_LIMIT:
            delay = FAILED_RETRY
            new, level = AppState.FAILED, logging.ERROR
            why = (f"{self.failures} failed starts in a row; next try in {delay:g} s, "
                   f"or `passenger-lite restart {self.name}`")
        else:
            delay = min(BACKOFF_BASE * 2 ** (self.failures - 1), BACKOFF_MAX) * random.uniform(0.75, 1.25)
            new = AppState.BACKOFF if not self.ready else self.state  # ready workers: it keeps running
            level = logging.INFO
            why = f"{f.exit + '; ' if f.exit else ''}next try in {delay:.1f} s"
        if new is not self.state:
            self._set_state(new, why, level)
        else:  # no transition (already failed, or ready workers keep serving): the delay still
            log.log(level, "%s: %s (%s)", self.name, self.state.value, why)
        self._backoff_queues = after_ready and self.state is not AppState.FAILED
        if not self.ready and not self._backoff_queues:  # nobody can serve the waiting requests: tell them now
            self._fail_queue(503, f"The application {self.name!r} could not be started.", f)
        self._schedule_retry(delay)

    def _proven(self, w: Worker) -> None:
        """`w` stayed up min_uptime after it became ready: the app starts fine (failures reset)."""
        w.proven = True
        self.failures = 0
        self.last_failure = None

    def _schedule_retry(self, delay: float) -> None:
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        self._retry_handle = self.loop.call_later(delay, self._retry)

    def _retry(self) -> None:
        self._retry_handle = None
        if self.stopping:
            return
        if self.state in (AppState.BACKOFF, AppState.FAILED):
            self._set_state(AppState.STARTING if not self.ready else AppState.RUNNING, "next try")
        if self.min > len(self.live):
            self.ensure_min()
        elif self.queue:
            self._maybe_spawn()
        elif not self.ready and not self.starting:
            self._set_state(AppState.IDLE, "starts on the next request")

    # ------------------------------------------------------------------ exits, faults, drains

    def on_worker_exit(self, w: Worker) -> None:
        """The process is gone. The one place a crash is counted and handled, whether its exit or a
        failed request (worker_failed: out of rotation first, then here) noticed it first."""
        expected = w.state is W.STOPPING
        if w.state not in (W.STOPPED, W.FAILED):  # logged below ("stopped", "exited unexpectedly"),
            w.set_state(W.STOPPED if expected else W.FAILED, level=None)  # or as a failed start
        if w.drain_timer is not None:
            w.drain_timer.cancel()
            w.drain_timer = None
        if w in self.workers and not w.spawning:  # a spawning one is removed when its spawn ends
            self.workers.remove(w)
        if not w.handover:
            self.poolset.slot_freed()
        crashed = not expected and w.ready_mono
        if crashed:
            self.crashes += 1
            log.warning("%s: worker #%d (pid %s) exited unexpectedly (%s)%s; %d request(s) were in flight",
                        self.name, w.id, w.pid, _exit_text(w), f" after {w.fault}" if w.fault else "",
                        w.in_flight)
        elif expected:
            plain = w.exit_code in (0, -signal.SIGTERM)  # it did as asked: no need to say how
            log.info("%s: worker #%d (pid %s) stopped%s", self.name, w.id, w.pid, "" if plain else f" ({_exit_text(w)})")
        if self.stopping:
            if not self.workers:
                self._set_state(AppState.STOPPED)
            return
        if not self.ready and not self.starting and self.state is AppState.RUNNING:
            self._set_state(AppState.IDLE, f"worker #{w.id} {'stopped' if expected else 'exited'}; none left")
        if crashed:
            up = self.clock() - w.ready_mono
            if not w.proven and up < self.min_uptime:  # a crash loop: back off as for a boot failure
                self._start_failed(StartFailure(
                    self.name, "start", f"the worker exited {up:.1f} s after it became ready ({_exit_text(w)}); "
                    f"an exit within min_uptime ({self.min_uptime:g} s) counts as a failed start",
                    command=w.command, cwd=w.cwd, exit=_exit_text(w), output="\n".join(w.output),
                    hints=hints_for("\n".join(w.output))), after_ready=True)
            else:
                self.ensure_min()
        if self.queue:
            self._dispatch_queue()
            if self.queue:
                self._maybe_spawn()

    def worker_failed(self, w: Worker, why: str) -> None:
        """A request could not reach `w`, or it did not answer in time: out of rotation now. If
        it exited, on_worker_exit handles it as any crash; if it lives, it is hung: replaced."""
        if w.fault or w.state not in (W.READY, W.DRAINING):
            return
        w.fault = why
        w.confirming = True
        if w.state is W.READY:
            w.stop_reason = why
            w.set_state(W.DRAINING, f"{why}; out of rotation", logging.WARNING)
        else:
            log.warning("%s: %s; out of rotation already (draining)", w.label, why)
        self.loop.create_task(self._confirm_fault(w, why))
        if self.queue and not self.stopping:  # requests wait: not for the check below
            self._dispatch_queue()
            if self.queue:
                self._maybe_spawn()

    async def _confirm_fault(self, w: Worker, why: str) -> None:
        try:
            if await w.wait_exit(CONFIRM_EXIT):
                return  # it had died: counted and replaced by on_worker_exit
        finally:
            w.confirming = False
        if w.state is not W.DRAINING:
            return
        self.hangs += 1
        log.warning("%s (pid %s) is alive but %s: replacing it", w.label, w.pid, why)
        self._drain(w, why)
        if not self.stopping:
            self.ensure_min()
            if self.queue:
                self._maybe_spawn()

    def _drain(self, w: Worker, why: str) -> None:
        """No new requests for `w`; it stops once its requests end, or is killed (with its process
        group) shutdown_timeout after it began draining (plus DRAIN_KILL_AFTER, so that the proxy's
        own end of a drain, 1001 to WebSockets, comes first)."""
        if w.state is W.READY:
            w.stop_reason = why
            w.set_state(W.DRAINING, why)
        if w.state is not W.DRAINING:
            return
        if w.drain_timer is None:
            w.drain_deadline = self.clock() + self.shutdown_timeout
            w.drain_timer = self.loop.call_later(self.shutdown_timeout + DRAIN_KILL_AFTER, self._drain_expired, w)
        if not w.in_flight and not w.confirming:
            self.loop.create_task(w.stop(self._grace(w), why))

    def _grace(self, w: Worker) -> float:
        """TERM -> KILL time for a worker that leaves: what is left of its drain (at least 1 s)."""
        if w.drain_timer is None:
            return self.shutdown_timeout
        return max(w.drain_deadline - self.clock(), 1.0)

    def _drain_expired(self, w: Worker) -> None:
        w.drain_timer = None
        if w.state is not W.DRAINING:
            return
        why = w.stop_reason or "draining"
        log.warning("%s (pid %s): %d request(s) still in flight after shutdown_timeout (%g s) of draining "
                    "(%s): killing it", w.label, w.pid, w.in_flight, self.shutdown_timeout, why)
        w.set_state(W.STOPPING, level=None)  # the warning above is its line
        self.loop.create_task(w.kill())

    # ------------------------------------------------------------------ periodic (AppPool.sweep)

    def _sweep_ready(self, mono: float) -> None:
        """A worker up min_uptime is proven; an idle one is probed for liveness."""
        for w in self.ready:
            if not w.proven and mono - w.ready_mono >= self.min_uptime:
                self._proven(w)
            if not w.in_flight and not w.probing and mono - max(w.last_used, w.probed) >= LIVENESS_IDLE:
                w.probing = True
                self.loop.create_task(self._liveness(w))

    def _sweep_workers(self, mono: float) -> None:
        """Idle workers past idle_timeout stop (down to min_processes); memory_limit is checked."""
        if self.stopping or self.restarting:
            return
        idle_timeout = self.app.idle_timeout
        if idle_timeout and len(self.live) > self.min:
            idle = [w for w in self.ready if not w.in_flight and mono - w.last_used > idle_timeout]
            if idle:
                w = min(idle, key=lambda x: x.last_used)
                self.loop.create_task(w.stop(self.shutdown_timeout, f"idle for {idle_timeout:g} s"))
        if self.app.memory_limit:
            self._check_memory(mono)

    async def _liveness(self, w: Worker) -> None:
        """An idle worker must answer a request (OPTIONS *, any status) within response_timeout."""
        used = w.last_used
        timeout = min(self.response_timeout, LIVENESS_TIMEOUT)
        try:
            ok = await w._probe(timeout)
        finally:
            w.probing = False
            w.probed = self.clock()
        if not ok and w.state is W.READY and not w.in_flight and w.last_used == used:
            self.worker_failed(w, f"did not answer a liveness probe within {timeout:g} s")

    def _check_memory(self, mono: float) -> None:
        import psutil

        limit = self.app.memory_limit * 1024 * 1024
        for w in list(self.ready):
            if mono - w.mem_checked < MEMORY_CHECK_EVERY:
                continue
            w.mem_checked = mono
            w.rss = rss_of(w.pid, psutil)
            if w.rss > limit:
                self.recycle(w, f"uses {w.rss / 1048576:.0f} MiB (memory_limit {self.app.memory_limit} MiB)")

    def _check_memory_now(self, w: Worker) -> None:
        """After a request: the worker's own RSS (one psutil read; the sweep adds its children)."""
        import psutil

        w.mem_quick = w.last_used
        if w.state is not W.READY or w.recycling or w.pid is None:
            return
        try:
            rss = psutil.Process(w.pid).memory_info().rss
        except psutil.Error:
            return
        if rss > self.app.memory_limit * 1024 * 1024:
            w.rss = max(w.rss, rss)
            self.recycle(w, f"uses {rss / 1048576:.0f} MiB (memory_limit {self.app.memory_limit} MiB)")

    # ------------------------------------------------------------------ recycle, restart, stop

    def recycle(self, w: Worker, why: str) -> None:
        """Replace `w` gracefully: the replacement is ready before `w` stops taking requests."""
        if w.recycling or self.stopping:
            return
        w.recycling = True
        self.loop.create_task(self._replace(w, why))

    async def _replace(self, old: Worker, why: str) -> str:
        """Replace `old`: "replaced" (the new worker was ready first), "in place" (no slot beside it
        under max_pool_size within shutdown_timeout: it drained first), "gone" (it ended meanwhile)
        or "failed" (the new worker failed to start: see last_failure; `old` keeps serving)."""
        self._surge += 1
        try:
            got = await self._wait_for_slot(old, self.clock() + self.shutdown_timeout + SLOT_WAIT_EXTRA)
            new = await self._spawn_one(self._new_worker()) if got else None
        finally:
            self._surge -= 1
        if got:
            if new is None:
                old.recycling = False
                return "failed"
            if old.state is W.READY:
                self._drain(old, why)
                if not old.in_flight:  # its slot is free again before the next replacement asks
                    await old.wait_exit()
            return "replaced"
        if old.state is not W.READY or self.stopping:
            return "gone"
        log.info("%s: no room for a new worker beside #%d under max_pool_size (%d): replacing it in place",
                 self.name, old.id, self.poolset.site.config.max_pool_size)
        old.handover = True  # its slot is the new worker's: nobody else may take it meanwhile
        self._drain(old, why)
        await old.wait_exit()
        if self.stopping:
            self.poolset.slot_freed()
            return "gone"
        new = await self._spawn_one(self._new_worker())
        return "in place" if new is not None else "failed"

    async def _wait_for_slot(self, old: Worker, deadline: float) -> bool:
        """A surge slot for `old`'s replacement, waiting for one (draining workers end within
        shutdown_timeout) until `deadline`. False: none came, or `old` is no longer ready."""
        while True:
            if self.poolset.reserve_slot(self, surge=True):
                return True
            left = deadline - self.clock()
            if left <= 0 or old.state is not W.READY or self.stopping:
                return False
            await self.poolset.wait_for_slot(left)

    async def restart(self, reason: str, keep_old_on_failure: bool = True) -> bool:
        """Rolling restart: each worker is replaced by a new one that is ready first.
        If a new worker fails to start, the old ones keep serving (unless told otherwise)."""
        self.restarts += 1
        self.last_restart = reason
        self.last_restart_at = time.time()  # wall clock, shown to users (status: when): not the pool clock
        if self.restarting:
            self.restart_again = reason
            self.last_restart_result = "queued: it runs once the restart under way ends"
            return True
        self.restarting = True
        ok = True
        done: dict[str, int] = {}
        try:
            while True:
                if self.state in (AppState.FAILED, AppState.BACKOFF):
                    self.failures = 0
                    if self._retry_handle is not None:
                        self._retry_handle.cancel()
                        self._retry_handle = None
                    self._set_state(AppState.STARTING if not self.ready else AppState.RUNNING, f"restart ({reason})")
                old = [w for w in self.workers if w.state in (W.READY, W.STARTING)]
                log.info("%s: restarting %d worker(s): %s", self.name, len(old), reason)
                for w in old:
                    if w.state is W.STARTING:
                        await w.stop(self.shutdown_timeout, "restart")
                        continue
                    result = await self._replace(w, f"restart ({reason})")
                    done[result] = done.get(result, 0) + 1
                    if result == "failed":
                        ok = False
                        f = self.last_failure
                        log.error("%s: restart failed%s; %s", self.name, f": {f.message}" if f else "",
                                  "the old workers keep serving" if keep_old_on_failure else "stopping them")
                        if not keep_old_on_failure:
                            for o in old:
                                if o.state is W.READY:
                                    self._drain(o, "restart failed")
                        break
                if ok and not old:
                    self.ensure_min()
                again, self.restart_again = self.restart_again, None
                if again is None:
                    break
                reason = again
        finally:
            self.restarting = False
        self.last_restart_result = _restart_text(done, self.poolset.site.config.max_pool_size)
        log.info("%s: restart %s: %s", self.name, "done" if ok else "failed", self.last_restart_result)
        return ok

    async def stop(self, timeout: float) -> None:
        """Stop every worker: in-flight requests get up to `timeout` (the proxy drained already)."""
        if not self.stopping:
            self._set_state(AppState.STOPPING, "shutting down")
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        self._fail_queue(503, "The application is shutting down.")
        workers = list(self.workers)
        if workers:
            await asyncio.gather(*(w.stop(timeout, "shutting down") for w in workers), return_exceptions=True)
        self._set_state(AppState.STOPPED)


def _restart_text(done: dict[str, int], pool_size: int) -> str:
    parts = []
    if done.get("replaced"):
        parts.append(f"{done['replaced']} worker(s) replaced, each after its replacement was ready")
    if done.get("in place"):
        parts.append(f"{done['in place']} replaced in place (no room beside them under max_pool_size "
                     f"{pool_size}: the old worker drained before the new one started)")
    if done.get("gone"):
        parts.append(f"{done['gone']} ended meanwhile")
    if done.get("failed"):
        parts.append("a new worker failed to start; the old ones that were not replaced keep serving")
    return "; ".join(parts) or "no workers to replace"


def rss_of(pid: int | None, psutil) -> int:
    """RSS of a worker and all its descendants, in bytes."""
    if pid is None:
        return 0
    try:
        p = psutil.Process(pid)
        total = p.memory_info().rss
        for c in p.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


def _exit_text(w: Worker) -> str:
    return describe_exit(w.exit_code) or "unknown exit"
