"""AppPool: one app's workers, its FIFO wait queue, and the decisions about them.

Checkout follows Passenger: the least busy ready worker (in-flight / concurrency) that has room
takes the request; when every worker is full the request waits in the app's queue (`max_queue`,
then 503; `queue_timeout`, then 504) and one more worker is spawned while the app is below
`max_processes`. Apps with concurrency 0 never fill up; they scale out when in-flight requests per
worker pass `scale_threshold`.

Lifecycle (issue 4): failed starts back off exponentially with jitter and, after
FAIL_LIMIT in a row, the app is marked failed (503 with its error page) and retried later;
crashed workers are replaced; idle workers stop after `idle_timeout` down to `min_processes`;
workers are recycled after `max_requests` or past `memory_limit`; restarts are rolling (the new
worker is ready before the old one stops taking requests, then the old one drains).

Faults (issue 11): a worker is out of rotation and replaced the same way whichever path notices
first: its exit, a request that cannot reach it, a response that times out, an idle worker that
does not answer a liveness probe. An exit within `min_uptime` of becoming ready is a failed start
(supervisor's startsecs). A drain ends at shutdown_timeout: the worker is killed then. A rolling
restart waits for a free slot under max_pool_size, else replaces the worker in place.
`check_invariants()` states what must hold between any two events (Passenger's Group invariants).

`acquire`, `release` and `cancel` are the proxy's hot path: plain attribute work, no awaits.
"""
from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections import deque
from typing import TYPE_CHECKING

from passenger_lite.proxy.checkout import Unavailable
from passenger_lite.spawners.base import short_command

from .states import AppState, WorkerState
from .worker import StartFailure, Worker, hints_for

if TYPE_CHECKING:
    from passenger_lite.manager.config import AppConfig

    from .poolset import PoolSet

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


class AppPool:
    def __init__(self, app: "AppConfig", spawner, poolset: "PoolSet"):
        self.poolset = poolset
        self.spawner = spawner
        self.workers: list[Worker] = []
        self.ready: list[Worker] = []      # READY workers, the only ones acquire() looks at
        self.queue: deque = deque()
        self.state = AppState.IDLE
        self.starting = 0                  # workers being spawned
        self.failures = 0                  # failed starts in a row
        self.last_failure: StartFailure | None = None
        self.retry_at = 0.0
        self.stopping = False
        self.restarting = False
        self.restart_again: str | None = None
        self.last_restart = ""             # "when: why" for status
        self.last_restart_at = 0.0
        self.served = 0
        self.spawns = 0
        self.crashes = 0
        self.restarts = 0
        self.failed_starts = 0
        self.hangs = 0                     # workers taken out for not answering (timeout, probe)
        self.last_restart_result = ""      # what the last restart did, for `restart APP`
        self._next_id = 1
        self._retry_handle: asyncio.TimerHandle | None = None
        self._surge = 0                    # extra workers allowed during a rolling restart
        self._backoff_queues = False       # in backoff after an exit within min_uptime: requests wait
        self.configure(app)

    def configure(self, app: "AppConfig") -> None:
        self.app = app
        self.name = app.name
        self.min = app.min_processes
        self.max = app.max_processes
        self.concurrency = app.concurrency or 0
        self.max_queue = app.max_queue
        self.queue_timeout = app.queue_timeout
        self.response_timeout = app.response_timeout
        self.redirect_https = app.redirect_https
        self.error_page = app.error_page
        self.min_uptime = app.min_uptime

    def __repr__(self) -> str:
        return f"<AppPool {self.name} {self.state.value} workers={len(self.workers)} queue={len(self.queue)}>"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.poolset.loop

    # ------------------------------------------------------------------ the hot path

    def _pick(self) -> Worker | None:
        best = None
        best_load = 0.0
        for w in self.ready:
            c = w.concurrency
            n = w.in_flight
            if c:
                if n >= c:
                    continue
                load = n / c
            else:
                load = n
            if best is None or load < best_load:
                best, best_load = w, load
                if not n:
                    break
        return best

    def acquire(self, ex) -> Worker | None:
        """A worker for `ex` now, or None when `ex` waits in the queue (the pool calls
        ex.on_worker / ex.on_unavailable later). Raises Unavailable for an immediate 503."""
        w = self._pick()
        if w is not None:
            w.in_flight += 1
            if not self.concurrency and w.in_flight > self.app.scale_threshold:
                self._scale_unlimited()
            return w
        if (not self.ready and not self.starting and (self.state is AppState.FAILED or (
                self.state is AppState.BACKOFF and not self._backoff_queues))):
            raise Unavailable(503, f"The application {self.name!r} could not be started.", self.last_failure)
        if self.stopping:
            raise Unavailable(503, "The application is shutting down.")
        if len(self.queue) >= self.max_queue and (self.ready or not self.starting):
            # (not while the app's first worker starts: a cold start holds its burst, issue 12)
            raise Unavailable(503, "Too many requests are waiting for this application.")
        ex.queue_deadline = self.loop.time() + self.queue_timeout
        self.queue.append(ex)
        self._maybe_spawn()
        return None

    def release(self, w: Worker, failed: bool = False, reason: str = "") -> None:
        """The exchange on `w` ended (or never reached it, or timed out, when `failed`)."""
        w.in_flight -= 1
        w.last_used = time.monotonic()
        if failed:
            self.worker_failed(w, reason)  # out of rotation now, before the queue below
        else:
            w.served += 1
            self.served += 1
            limit = self.app.max_requests
            if limit and w.served >= limit and w.state is W.READY:
                self.recycle(w, f"served {w.served} requests (max_requests)")
            if self.app.memory_limit and w.last_used - w.mem_quick >= MEMORY_CHECK_AFTER_REQUEST:
                self._check_memory_now(w)
        if w.state is W.DRAINING and not w.in_flight and not w.confirming:
            self.loop.create_task(w.stop(self._grace(w)))
        if self.queue:
            self._dispatch_queue()

    def cancel(self, ex) -> None:
        try:
            self.queue.remove(ex)
        except ValueError:
            pass

    def _dispatch_queue(self) -> None:
        q = self.queue
        while q:
            w = self._pick()
            if w is None:
                return
            ex = q.popleft()
            w.in_flight += 1
            ex.on_worker(w)

    # ------------------------------------------------------------------ settings

    @property
    def shutdown_timeout(self) -> float:
        t = self.app.shutdown_timeout
        return t if t is not None else self.poolset.site.config.shutdown_timeout

    @property
    def live(self) -> list[Worker]:
        """Workers that count towards max_processes (not draining or stopping)."""
        return [w for w in self.workers if w.state in (W.STARTING, W.READY)]

    # ------------------------------------------------------------------ spawning

    def _maybe_spawn(self) -> None:
        """Requests are waiting: spawn one more worker if allowed (one start at a time, as Passenger)."""
        if self.stopping or self.starting or self.state in (AppState.FAILED, AppState.BACKOFF):
            return
        n = len(self.live)
        if n >= self.max:  # a restart's surge worker is its own, never one more for the load
            return
        if self.spawn():
            log.info("%s: %d request(s) waiting: %s", self.name, len(self.queue),
                     f"scaling up to {n + 1} workers" if n else "starting a worker on demand")

    def _scale_unlimited(self) -> None:
        """Concurrency 0: another worker when in-flight per worker passes the threshold."""
        if self.stopping or self.starting or self.state is not AppState.RUNNING:
            return
        live = self.live
        if len(live) >= self.max:
            return
        if sum(w.in_flight for w in self.ready) / max(len(self.ready), 1) > self.app.scale_threshold:
            log.info("%s: %d requests in flight on %d worker(s): scaling out", self.name,
                     sum(w.in_flight for w in self.ready), len(self.ready))
            self.spawn()

    def ensure_min(self) -> None:
        if self.stopping or self.state in (AppState.FAILED, AppState.BACKOFF):
            return
        need = self.min - len(self.live)
        for _ in range(max(need, 0)):
            if not self.spawn():
                break

    def spawn(self, replacing: Worker | None = None) -> bool:
        """Start one worker in the background. False when max_pool_size has no room now."""
        if not self.poolset.reserve_slot(self, surge=replacing is not None):
            return False
        w = self._new_worker()
        self.loop.create_task(self._spawn_one(w))
        return True

    def _new_worker(self) -> Worker:
        """A STARTING worker, counted in `starting` until its spawn ends (its slot is reserved)."""
        wid = self._next_id
        self._next_id += 1
        w = self.poolset.new_worker(self, wid)
        w.spawning = True
        self.workers.append(w)
        self.starting += 1
        self.spawns += 1
        if self.state in (AppState.IDLE, AppState.STOPPED):
            self._set_state(AppState.STARTING)
        return w

    def _spawn_ended(self, w: Worker) -> None:
        w.spawning = False
        self.starting -= 1
        if w.pid is None or w.exit_code is not None:  # gone (its exit left it here for us)
            if w in self.workers:
                self.workers.remove(w)
            if w.pid is None:  # never ran: on_worker_exit did not free its slot
                self.poolset.slot_freed()

    async def _spawn_one(self, w: Worker) -> Worker | None:
        wid = w.id
        t0 = time.monotonic()
        try:
            spec = self.poolset.worker_spec(self, w)
            log.info("%s: spawning worker #%d: %s", self.name, wid, short_command(spec.argv))
            await w.start(spec, self.app.start_timeout, self.poolset.printer, self.poolset.watchdog,
                          user=w.user)
        except StartFailure as f:
            self._spawn_ended(w)
            if w.stop_reason:  # we stopped it while it started (a restart): not the app's failure
                log.info("%s: worker #%d was stopped while starting (%s)", self.name, wid, w.stop_reason)
                if not self.stopping:
                    self.ensure_min()
                    if self.queue:
                        self._maybe_spawn()
                return None
            self._start_failed(f)
            return None
        except Exception as e:  # noqa: BLE001 - a spawner bug is a failed start, not a crash
            log.exception("%s: spawning worker #%d failed", self.name, wid)
            if w.alive:
                await w.kill()
            self._spawn_ended(w)
            self._start_failed(StartFailure(self.name, "spawn", f"{type(e).__name__}: {e}"))
            return None
        self._became_ready(w, t0)
        return w

    def _became_ready(self, w: Worker, t0: float) -> None:
        """`w` answered its readiness probe (it is READY): its spawn ends, the queue gets it."""
        self._spawn_ended(w)
        log.info("%s: worker #%d (pid %s) ready in %d ms", self.name, w.id, w.pid,
                 (time.monotonic() - t0) * 1000)
        if not self.min_uptime:
            self._proven(w)
        if self.state is not AppState.STOPPING:
            self._set_state(AppState.RUNNING)
        if self.stopping:
            self.loop.create_task(w.stop(self.shutdown_timeout, "shutting down"))
            return
        if self.queue:
            self._dispatch_queue()
            if self.queue:
                self._maybe_spawn()

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
            self._set_state(AppState.FAILED)
            log.error("%s: %d failed starts in a row; marked failed, next try in %g s "
                      "(or `passenger-lite restart %s`)", self.name, self.failures, delay, self.name)
        else:
            delay = min(BACKOFF_BASE * 2 ** (self.failures - 1), BACKOFF_MAX) * random.uniform(0.75, 1.25)
            if not self.ready:
                self._set_state(AppState.BACKOFF)
            log.info("%s: next start in %.1f s", self.name, delay)
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
        self.retry_at = time.monotonic() + delay
        self._retry_handle = self.loop.call_later(delay, self._retry)

    def _retry(self) -> None:
        self._retry_handle = None
        if self.stopping:
            return
        if self.state in (AppState.BACKOFF, AppState.FAILED):
            self._set_state(AppState.STARTING if not self.ready else AppState.RUNNING)
        if self.min > len(self.live):
            self.ensure_min()
        elif self.queue:
            self._maybe_spawn()
        elif not self.ready and not self.starting:
            self._set_state(AppState.IDLE)

    def _fail_queue(self, status: int, message: str, problem=None) -> None:
        q = self.queue
        self.queue = deque()
        for ex in q:
            ex.on_unavailable(status, message, problem)

    # ------------------------------------------------------------------ worker events

    def on_worker_state(self, w: Worker, old: WorkerState, new: WorkerState, why: str) -> None:
        if old is W.READY and w in self.ready:
            self.ready.remove(w)
        if new is W.READY:
            self.ready.append(w)
        if why and (new is W.DRAINING or (new is W.STOPPING and old is not W.DRAINING)):
            log.info("%s: stopping worker #%d (pid %s): %s", self.name, w.id, w.pid, why)

    def on_worker_exit(self, w: Worker) -> None:
        """The process is gone. The one place a crash is counted and handled, whether its exit or a
        failed request (worker_failed: out of rotation first, then here) noticed it first."""
        expected = w.state is W.STOPPING
        if w.state not in (W.STOPPED, W.FAILED):
            w.set_state(W.STOPPED if expected else W.FAILED)
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
            self._set_state(AppState.IDLE)
        if crashed:
            up = time.monotonic() - w.ready_mono
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
        log.warning("%s: %s; taking it out of rotation", w.label, why)
        if w.state is W.READY:
            w.stop_reason = why
            w.set_state(W.DRAINING, why)
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
            w.drain_deadline = self.loop.time() + self.shutdown_timeout
            w.drain_timer = self.loop.call_later(self.shutdown_timeout + DRAIN_KILL_AFTER, self._drain_expired, w)
        if not w.in_flight and not w.confirming:
            self.loop.create_task(w.stop(self._grace(w), why))

    def _grace(self, w: Worker) -> float:
        """TERM -> KILL time for a worker that leaves: what is left of its drain (at least 1 s)."""
        if w.drain_timer is None:
            return self.shutdown_timeout
        return max(w.drain_deadline - self.loop.time(), 1.0)

    def _drain_expired(self, w: Worker) -> None:
        w.drain_timer = None
        if w.state is not W.DRAINING:
            return
        why = w.stop_reason or "draining"
        log.warning("%s (pid %s): %d request(s) still in flight after shutdown_timeout (%g s) of draining "
                    "(%s): killing it", w.label, w.pid, w.in_flight, self.shutdown_timeout, why)
        w.set_state(W.STOPPING)
        self.loop.create_task(w.kill())

    def _set_state(self, new: AppState) -> None:
        if self.state is not new:
            log.debug("%s: %s -> %s", self.name, self.state.value, new.value)
            self.state = new

    # ------------------------------------------------------------------ periodic (PoolSet.sweep)

    def sweep(self, now: float, mono: float) -> None:
        for w in self.ready:
            if not w.proven and mono - w.ready_mono >= self.min_uptime:
                self._proven(w)
            if not w.in_flight and not w.probing and mono - max(w.last_used, w.probed) >= LIVENESS_IDLE:
                w.probing = True
                self.loop.create_task(self._liveness(w))
        q = self.queue
        if q and (self.ready or not self.starting):
            # while the first worker is still starting, waiting requests are bounded by start_timeout
            while q and q[0].queue_deadline < now:
                ex = q.popleft()
                ex.on_unavailable(504, "The request waited too long for a free worker.",
                                  None)
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
            w.probed = time.monotonic()
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

    # ------------------------------------------------------------------ restart, recycle, stop

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
            got = await self._wait_for_slot(old, self.loop.time() + self.shutdown_timeout + SLOT_WAIT_EXTRA)
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
            left = deadline - self.loop.time()
            if left <= 0 or old.state is not W.READY or self.stopping:
                return False
            await self.poolset.wait_for_slot(left)

    async def restart(self, reason: str, keep_old_on_failure: bool = True) -> bool:
        """Rolling restart: each worker is replaced by a new one that is ready first.
        If a new worker fails to start, the old ones keep serving (unless told otherwise)."""
        self.restarts += 1
        self.last_restart = reason
        self.last_restart_at = time.time()
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
                    self._set_state(AppState.STARTING if not self.ready else AppState.RUNNING)
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
        self.stopping = True
        self._set_state(AppState.STOPPING)
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        self._fail_queue(503, "The application is shutting down.")
        workers = list(self.workers)
        if workers:
            await asyncio.gather(*(w.stop(timeout, "shutting down") for w in workers), return_exceptions=True)
        self._set_state(AppState.STOPPED)

    # ------------------------------------------------------------------ invariants

    def check_invariants(self, checkouts: dict | None = None) -> list[str]:
        """What must hold between any two events (Passenger's Group invariants); [] when all do.
        `checkouts` (Worker -> open exchanges on it, from the proxy) checks the in-flight counts."""
        problems = []
        ready = [w for w in self.workers if w.state is W.READY]
        if sorted(map(id, self.ready)) != sorted(map(id, ready)):
            problems.append(f"ready list {[w.id for w in self.ready]} != READY workers {[w.id for w in ready]}")
        spawning = [w for w in self.workers if w.spawning]
        if self.starting != len(spawning):
            problems.append(f"starting = {self.starting} but {len(spawning)} spawn(s) in progress")
        for w in self.workers:
            if w.state is W.STARTING and not w.spawning:
                problems.append(f"#{w.id} is STARTING but no spawn is in progress for it")
            if w.in_flight < 0:
                problems.append(f"#{w.id} has {w.in_flight} requests in flight")
            if w.state is W.STARTING and w.in_flight:
                problems.append(f"#{w.id} is STARTING with {w.in_flight} request(s) in flight")
            if checkouts is not None and checkouts.get(w, 0) != w.in_flight:
                problems.append(f"#{w.id} counts {w.in_flight} in flight but {checkouts.get(w, 0)} "
                                f"exchange(s) hold it")
        if checkouts is not None:
            for w, n in checkouts.items():
                if w not in self.workers and w.state not in (W.STOPPED, W.FAILED):
                    problems.append(f"#{w.id} ({w.state.value}) holds {n} exchange(s) but is not in the pool")
        if self.queue:
            w = self._pick()
            if w is not None:
                problems.append(f"{len(self.queue)} request(s) wait while #{w.id} could take one")
            full = len(self.live) >= self.max or self in self.poolset._waiting
            if not (self.starting or full or self._retry_handle is not None or self.stopping):
                problems.append(f"{len(self.queue)} request(s) wait, no worker is starting and the pool is not full")
            gone = sum(1 for ex in self.queue if ex.finished)
            if gone:
                problems.append(f"{gone} finished request(s) still in the queue")
        return problems

    # ------------------------------------------------------------------ status

    def snapshot(self) -> dict:
        mono = time.monotonic()
        return {
            "name": self.name,
            "type": self.app.type,
            "state": self.state.value,
            "hosts": list(self.app.hosts),
            "path": self.app.path,
            "root": self.app.root,
            "concurrency": self.concurrency,
            "min_processes": self.min,
            "max_processes": self.max,
            "queue": len(self.queue),
            "requests": self.served,
            "spawns": self.spawns,
            "crashes": self.crashes,
            "failed_starts": self.failed_starts,
            "hangs": self.hangs,
            "min_uptime": self.min_uptime,
            "restarts": self.restarts,
            "last_restart": {"reason": self.last_restart, "at": self.last_restart_at} if self.last_restart else None,
            "last_error": str(self.last_failure.message) if self.last_failure else None,
            "workers": [
                {
                    "id": w.id,
                    "pid": w.pid,
                    "state": w.state.value,
                    "in_flight": w.in_flight,
                    "requests": w.served,
                    "uptime_s": round(mono - w.started_mono, 1),
                    "idle_s": round(mono - w.last_used, 1) if not w.in_flight else 0.0,
                    "rss_bytes": w.rss,
                    "stop_reason": w.stop_reason or None,
                }
                for w in self.workers
            ],
        }


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
    from .worker import describe_exit

    return describe_exit(w.exit_code) or "unknown exit"
