"""AppPool: one app's checkout (acquire, release, cancel), its FIFO wait queue, and spawn admission.

Checkout follows Passenger: the least busy ready worker (in-flight / concurrency) that has room
takes the request; when every worker is full the request waits in the app's queue (`max_queue`,
then 503; `queue_timeout`, then 504) and one more worker is spawned while the app is below
`max_processes`. Apps with concurrency 0 never fill up; they scale out when in-flight requests per
worker pass `scale_threshold`. What happens to the workers over time (backoff, retry, crashes,
hangs, drains, recycling, rolling restart, the sweeps) is manager/lifecycle.py, mixed in.
`check_invariants()` states what must hold between any two events (Passenger's Group invariants).

`acquire`, `release` and `cancel` are the proxy's hot path: plain attribute work, no awaits.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from passenger_lite.proxy.checkout import Unavailable
from passenger_lite.spawners.base import short_command

from .lifecycle import MEMORY_CHECK_AFTER_REQUEST, Lifecycle
from .spawnfail import StartFailure
from .states import APP_TRANSITIONS, AppState, WorkerState, check_transition
from .worker import Worker

if TYPE_CHECKING:
    from passenger_lite.manager.config import AppConfig, Site
    from passenger_lite.spawners.base import WorkerSpec

log = logging.getLogger("passenger_lite.manager")
W = WorkerState


class PoolHost(Protocol):
    """What an AppPool needs from the set of pools it is in (manager/poolset.py's PoolSet)."""

    loop: asyncio.AbstractEventLoop
    site: "Site"
    printer: object
    watchdog: object

    def reserve_slot(self, pool: "AppPool", surge: bool = False) -> bool: ...
    def wants_slot(self, pool: "AppPool") -> bool: ...
    async def wait_for_slot(self, timeout: float) -> None: ...
    def slot_freed(self) -> None: ...
    def backend_gone(self, w: Worker) -> None: ...
    def new_worker(self, pool: "AppPool", wid: int) -> Worker: ...
    def worker_spec(self, pool: "AppPool", w: Worker) -> "WorkerSpec": ...


class AppPool(Lifecycle):
    def __init__(self, app: "AppConfig", spawner, poolset: PoolHost, clock: Callable[[], float] = time.monotonic):
        self.poolset = poolset
        # The one clock of the app's lifecycle (monotonic seconds): every duration and deadline of
        # the pool, lifecycle.py and its workers reads it; unit tests drive a fake one. Timers are
        # still scheduled on the loop (call_later takes a delay, not a time on this clock).
        self.clock = clock
        self.spawner = spawner
        self.workers: list[Worker] = []
        self.ready: list[Worker] = []      # READY workers, the only ones acquire() looks at
        self.queue: deque = deque()
        self.state = AppState.IDLE
        self.starting = 0                  # workers being spawned
        self.failures = 0                  # failed starts in a row
        self.last_failure: StartFailure | None = None
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
        ex.queue_deadline = self.clock() + self.queue_timeout
        self.queue.append(ex)
        self._maybe_spawn()
        return None

    def release(self, w: Worker, failed: bool = False, reason: str = "") -> None:
        """The exchange on `w` ended (or never reached it, or timed out, when `failed`)."""
        w.in_flight -= 1
        w.last_used = self.clock()
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
    def stopping(self) -> bool:
        """Shutting down or removed: no new workers, no new requests."""
        return self.state is AppState.STOPPING or self.state is AppState.STOPPED

    @property
    def live(self) -> list[Worker]:
        """STARTING and READY workers: what max_processes counts (PoolSet.process_count, for
        max_pool_size, also counts the draining and stopping ones)."""
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

    def spawn(self) -> bool:
        """Start one worker in the background. False when max_pool_size has no room now."""
        if not self.poolset.reserve_slot(self):
            return False
        w = self._new_worker()
        self.loop.create_task(self._spawn_one(w))
        return True

    def make_worker(self, wid: int, sock: str, port: int | None = None) -> Worker:
        """A Worker of this app that reports its transitions and its exit here."""
        return Worker(self.app, wid, sock, port, on_state=self.on_worker_state, on_exit=self.on_worker_exit,
                      on_gone=self.poolset.backend_gone, last_failure=lambda: self.last_failure,
                      clock=self.clock)

    def _new_worker(self) -> Worker:
        """A STARTING worker, counted in `starting` until its spawn ends (its slot is reserved)."""
        wid = self._next_id
        self._next_id += 1
        w = self.poolset.new_worker(self, wid)
        w.spawning = True
        self.workers.append(w)
        self.starting += 1
        self.spawns += 1
        if self.state is AppState.IDLE:
            self._set_state(AppState.STARTING, f"spawning worker #{wid}")
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
        t0 = self.clock()
        try:
            await self.start_worker(w)
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

    async def start_worker(self, w: Worker) -> None:
        """The start seam: spawn `w`'s process and return once it answers (READY), or raise
        StartFailure. Unit tests give a pool a scripted one instead (no processes)."""
        spec = self.poolset.worker_spec(self, w)
        log.info("%s: spawning worker #%d: %s", self.name, w.id, short_command(spec.argv))
        await w.start(spec, self.app.start_timeout, self.poolset.printer, self.poolset.watchdog, user=w.user)

    def _became_ready(self, w: Worker, t0: float) -> None:
        """`w` answered its readiness probe (it is READY): its spawn ends, the queue gets it."""
        self._spawn_ended(w)
        log.info("%s: worker #%d (pid %s) ready in %d ms", self.name, w.id, w.pid,
                 (self.clock() - t0) * 1000)
        if not self.min_uptime:
            self._proven(w)
        if not self.stopping:
            self._set_state(AppState.RUNNING, f"worker #{w.id} ready")
        if self.stopping:
            self.loop.create_task(w.stop(self.shutdown_timeout, "shutting down"))
            return
        if self.queue:
            self._dispatch_queue()
            if self.queue:
                self._maybe_spawn()

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

    def _set_state(self, new: AppState, why: str = "", level: int = logging.INFO) -> None:
        """The one writer of the app's state: checks APP_TRANSITIONS, logs the transition once."""
        old = self.state
        if old is new:
            return
        check_transition(f"app {self.name}", APP_TRANSITIONS, old, new)
        self.state = new
        log.log(level, "%s: %s -> %s%s", self.name, old.value, new.value, f" ({why})" if why else "")
        self._boot_changed()

    # ------------------------------------------------------------------ periodic (PoolSet.sweep)

    def sweep(self, now: float, mono: float) -> None:
        """Every SWEEP_INTERVAL (PoolSet): the lifecycle's look at the workers, and 504 to the
        requests that waited past queue_timeout. `mono` is the time on the pool's clock (`now`,
        the loop's time, is not used here: every deadline of the pool is on its clock)."""
        self._sweep_ready(mono)
        q = self.queue
        if q and (self.ready or not self.starting):
            # while the first worker is still starting, waiting requests are bounded by start_timeout
            while q and q[0].queue_deadline < mono:
                ex = q.popleft()
                ex.on_unavailable(504, "The request waited too long for a free worker.",
                                  None)
        self._sweep_workers(mono)

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
            full = len(self.live) >= self.max or self.poolset.wants_slot(self)
            if not (self.starting or full or self._retry_handle is not None or self.stopping):
                problems.append(f"{len(self.queue)} request(s) wait, no worker is starting and the pool is not full")
            gone = sum(1 for ex in self.queue if ex.finished)
            if gone:
                problems.append(f"{gone} finished request(s) still in the queue")
        return problems

    # ------------------------------------------------------------------ boot state

    def boot_state(self) -> "BootState":
        """Is this app up? The one answer the boot screen, smoke, /health and `status --json`
        (`boot`, which the test harness waits on) read; they differ only in which field they use.

        `state`:
          "up"      a worker is READY (`ready` >= 1), or none is wanted: min_processes 0 and the
                    app IDLE (`idle`; it starts on the first request). /health and smoke want this.
          "failed"  not up, and the last start failed (`last_error` says why): backoff or failed.
          "booting" neither: its first worker is still starting (or none is left and one will be).
        `all_ready` (ready >= min_processes, at least one) is what the boot screen waits for
        before it shows an app ready; a failed start ends its wait even with some workers ready.
        Live: read it again for the present; `booted` stays set once the boot was over."""
        ready = len(self.ready)
        idle = not ready and self.min == 0 and self.state is AppState.IDLE
        error = str(self.last_failure.message) if self.last_failure is not None else None
        state = "up" if ready or idle else "failed" if error is not None else "booting"
        return BootState(state, ready, self.min, idle, error)

    _booted: asyncio.Event | None = None
    _boot_over = False

    @property
    def booted(self) -> asyncio.Event:
        """Set once the boot is over: boot_state() left "booting" (up, or a start failed)."""
        if self._booted is None:
            self._booted = asyncio.Event()
            self._boot_changed()
        return self._booted

    def _boot_changed(self) -> None:
        """After every app transition (_set_state): every outcome of a boot is one."""
        if not self._boot_over and self.boot_state().state != "booting":
            self._boot_over = True
        if self._boot_over and self._booted is not None and not self._booted.is_set():
            self._booted.set()

    # ------------------------------------------------------------------ status

    def snapshot(self) -> dict:
        mono = self.clock()
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


@dataclass(frozen=True)
class BootState:
    """AppPool.boot_state(): the answer and the numbers it came from."""

    state: str                # "booting" | "up" | "failed"
    ready: int                # READY workers
    min_processes: int
    idle: bool                # up with no worker, on purpose (min_processes 0)
    last_error: str | None    # why the last start failed

    @property
    def all_ready(self) -> bool:
        """Every min_processes worker is ready (at least one): what the boot screen waits for."""
        return self.ready > 0 and self.ready >= self.min_processes
