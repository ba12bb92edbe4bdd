"""All app pools, the global `max_pool_size`, and what the pools share (spawners, runtime folder,
watchdog, printer). The proxy's only view of the manager is the pools this builds.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from passenger_lite.spawners.base import WorkerContext, WorkerSpec

from .config import AppConfig, Site
from .pool import AppPool
from .runtimedir import SOCKET_NAME, WorkerDirs
from .states import WorkerState
from .users import apply_user
from .spawnfail import StartFailure

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("passenger_lite.manager")
SWEEP_INTERVAL = 0.5


class PoolSet:
    def __init__(self, site: Site, registry, workers_dir: Path, watchdog, printer, users=None):
        self.site = site
        self.registry = registry
        self.workers_dir = workers_dir
        self.watchdog = watchdog
        self.printer = printer
        self.users = users            # manager.users.UserPolicy or None (run as ourselves)
        self.loop = asyncio.get_running_loop()
        self.pools: dict[str, AppPool] = {}
        self._waiting: list[AppPool] = []  # pools that wanted a slot when max_pool_size was reached
        self._slot_waiters: list[asyncio.Future] = []  # restarts waiting for a slot (wait_for_slot)
        self._sock_seq = 0
        self._dirs: WorkerDirs | None = None  # the per-worker socket folders under workers_dir
        self._sweeper: asyncio.TimerHandle | None = None
        self.observers: list = []          # callables(worker): it is gone (the proxy drops its connections)
        for app in site.apps:
            self.pools[app.name] = AppPool(app, registry.get(app.type), self)

    # ------------------------------------------------------------------ workers

    def backend_gone(self, w: Worker) -> None:
        """A worker stops or has exited: tell the observers (Proxy.backend_gone)."""
        for o in self.observers:
            o(w)

    def new_worker(self, pool: AppPool, wid: int) -> Worker:
        self._sock_seq += 1
        sock = str(self.workers_dir / str(self._sock_seq) / SOCKET_NAME)  # its folder is made in worker_spec
        wants_port = getattr(pool.spawner, "wants_port", None)  # optional per-app choice (command spawner)
        uses_port = wants_port(pool.app) if wants_port is not None else getattr(pool.spawner, "uses_port", False)
        port = _free_port() if uses_port else None
        return pool.make_worker(wid, sock, port)

    def worker_spec(self, pool: AppPool, w: Worker) -> WorkerSpec:
        """The worker's command; also settles its user and makes its socket folder (issue 7).
        Raises StartFailure when that user cannot reach what the worker needs."""
        try:
            w.user = self.user_for(pool.app)
        except LookupError as e:
            raise StartFailure(pool.name, "user", str(e), cwd=pool.app.root) from None
        folder = Path(w.sock).parent.name
        dirs = self._worker_dirs()
        dirs.prune()
        dirs.track(folder, w, pool.workers)
        dirs.make(folder, w.user)
        if w.port is None:  # once it answers, the worker may no longer swap its socket
            w.on_answer = lambda: dirs.seal(folder, w.user)
        ctx = WorkerContext(app=pool.app, socket=w.sock, port=w.port, environment=self.site.config.environment,
                            worker_id=w.id)
        spec = pool.spawner.worker_spec(ctx)
        if w.user is not None:
            apply_user(spec, w.user, pool.app, w.sock)
        return spec

    def _worker_dirs(self) -> WorkerDirs:
        if self._dirs is None:
            self._dirs = WorkerDirs(self.workers_dir)
        return self._dirs

    def user_for(self, app: AppConfig):
        return self.users.for_app(app) if self.users is not None else None

    def process_count(self) -> int:
        """Workers whose process runs (also draining or stopping): what max_pool_size counts.
        Not AppPool.live, the STARTING and READY workers that max_processes counts."""
        return sum(1 for p in self.pools.values() for w in p.workers
                   if w.state in (WorkerState.STARTING, WorkerState.READY, WorkerState.DRAINING,
                                  WorkerState.STOPPING))

    def reserve_slot(self, pool: AppPool, surge: bool = False) -> bool:
        """Room for one more worker under max_pool_size? When full, stop the longest-idle worker
        of another app that has more than its min_processes (Passenger's behaviour) and say no
        for now: the pool is told when a slot frees up."""
        # rolling restarts and recycling may go one worker per app over the limit meanwhile; that
        # slot is the replacement's only, never one more worker for the load
        limit = self.site.config.max_pool_size
        if surge:
            limit += sum(p._surge for p in self.pools.values())
        if self.process_count() < limit:
            return True
        victims = [(w, p) for p in self.pools.values() if p is not pool and len(p.live) > p.min
                   for w in p.ready if not w.in_flight]
        if victims:
            v, vp = min(victims, key=lambda x: x[0].last_used)
            log.info("max_pool_size (%d) reached: stopping idle %s to make room for %s",
                     self.site.config.max_pool_size, v.label, pool.name)
            self.loop.create_task(v.stop(vp.shutdown_timeout, f"making room for {pool.name}"))
        if pool not in self._waiting:
            self._waiting.append(pool)
        return False

    def wants_slot(self, pool: AppPool) -> bool:
        """Did `pool` ask for a slot that max_pool_size had no room for (it is told when one frees)?"""
        return pool in self._waiting

    async def wait_for_slot(self, timeout: float) -> None:
        """Until a worker ends somewhere (a slot may be free), or `timeout`."""
        fut = self.loop.create_future()
        self._slot_waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if fut in self._slot_waiters:
                self._slot_waiters.remove(fut)

    def slot_freed(self) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        waiting, self._waiting = self._waiting, []
        for p in waiting:
            if p.queue:
                p._maybe_spawn()
            elif p.min > len(p.live):
                p.ensure_min()

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        """Spawn every app's min_processes and start the periodic sweep."""
        for p in self.pools.values():
            p.ensure_min()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for p in list(self.pools.values()):
            try:
                p.sweep(now, p.clock())  # each pool's own clock (time.monotonic unless injected)
            except Exception:  # noqa: BLE001 - keep sweeping the other pools
                log.exception("%s: periodic check failed", p.name)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def stop(self, timeout: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(*(p.stop(timeout) for p in self.pools.values()), return_exceptions=True)
        if self._dirs is not None:
            self._dirs.close()

    def snapshot(self) -> list[dict]:
        return [{**p.snapshot(), "boot": p.boot_state().state} for p in self.pools.values()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
