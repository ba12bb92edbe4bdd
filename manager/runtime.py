"""Wiring and the start/stop order of one front process.

Start: lock the instance folder -> watchdog -> pools -> proxy listeners -> control socket ->
extras (access log, metrics) -> min_processes spawned. Stop (SIGTERM, SIGINT, `passenger-lite
stop`): listeners closed -> in-flight requests finish (up to shutdown_timeout; the access log,
metrics and /health, which says `draining`, still see them) -> extras -> control socket ->
workers stopped (TERM, then KILL) -> watchdog -> lock. Each step is undone even if a later one
failed.

Signal handlers only put a command on a queue; the main loop acts on it (gunicorn's rule).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

from passenger_lite.proxy.server import Proxy
from passenger_lite.spawners.registry import default_registry

from . import config as configmod
from .config import ConfigError, Site
from .output import Printer
from .poolset import PoolSet
from .runtimedir import Instance
from .watchdog import Watchdog

log = logging.getLogger("passenger_lite.manager")


class Runtime:
    def __init__(self, site: Site, *, dev: bool = False, printer: Printer | None = None, registry=None,
                 startup_display=None):
        self.site = site
        self.dev = dev
        self.registry = registry or default_registry()
        self.printer = printer or Printer(fmt=site.config.log_format)
        self.commands: asyncio.Queue | None = None
        self.started_at = time.time()
        self.proxy: Proxy | None = None
        self.poolset: PoolSet | None = None
        self.instance: Instance | None = None
        self.extras: list = []  # (start, stop) add-ons: metrics, access log, watcher...
        self.startup_display = startup_display
        self.draining = False  # stopping: the listeners are closed, in-flight requests finish
        self._drained = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.commands = asyncio.Queue()
        async with contextlib.AsyncExitStack() as stack:
            # first in, last out: a second SIGTERM during the stop only queues a command, it does not
            # kill the manager halfway through stopping its workers
            for sig, cmd in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"), (signal.SIGHUP, "reload")):
                loop.add_signal_handler(sig, self.commands.put_nowait, (cmd, None))
                stack.callback(loop.remove_signal_handler, sig)
            self.instance = Instance(self.site.path)
            self.instance.lock()
            stack.callback(self.instance.unlock)
            watchdog = Watchdog()
            watchdog.start()
            stack.callback(watchdog.close)
            users = _user_policy(self.site)
            self.poolset = PoolSet(self.site, self.registry, self.instance.workers, watchdog, self.printer, users)
            stack.push_async_callback(self._stop_pools)
            self.proxy = Proxy(self.site, self.poolset.pools, loop)
            await self.proxy.listen()
            stack.push_async_callback(self._drain_proxy)
            from .control import ControlServer

            control = ControlServer(self)
            await control.start(self.instance.control)
            stack.push_async_callback(control.stop)
            for extra in self._extras():
                await extra.start()
                stack.push_async_callback(extra.stop)
            if self.startup_display is not None:
                await self.startup_display(self)
            else:
                await self.poolset.start()
                log.info("serving %d app(s) on %s", len(self.site.apps), ", ".join(self.proxy.urls()))
            while True:
                cmd, reply = await self.commands.get()
                if cmd == "stop":
                    log.info("stopping (in-flight requests get up to %g s)", self.site.config.shutdown_timeout)
                    if reply is not None:
                        reply.set_result({"ok": True})
                    break
                if cmd == "reload":
                    result = await self.reload()
                    if reply is not None:
                        reply.set_result(result)
            await self._drain_proxy()  # before the extras stop: they see the last requests
        log.info("stopped")
        return 0

    def _extras(self) -> list:
        from .extras import build_extras

        self.extras = build_extras(self)
        return self.extras

    async def _drain_proxy(self) -> None:
        if self._drained:
            return
        self._drained = True
        self.draining = True
        await self.proxy.close_listeners()
        await self.proxy.drain(self.site.config.shutdown_timeout)

    async def _stop_pools(self) -> None:
        await self.poolset.stop(self.site.config.shutdown_timeout)

    # ------------------------------------------------------------------ reload

    async def reload(self) -> dict:
        """Validate the config file again and apply it: new apps start, removed ones drain and
        stop, changed ones get a rolling restart. Listening sockets stay open throughout."""
        try:
            new = configmod.load(self.site.path, self.registry)
            users = _user_policy(new, announce=False)
        except ConfigError as e:
            log.error("reload rejected; the running config stays:\n%s", e)
            return {"ok": False, "error": str(e)}
        old = self.site
        if [str(a) for a in new.addresses] != [str(a) for a in old.addresses]:
            log.warning("reload: `listen` changed; listeners are kept as they are until a full restart")
            new.addresses = old.addresses
        ps = self.poolset
        old_apps = {a.name: a for a in old.apps}
        new_apps = {a.name: a for a in new.apps}
        added = [n for n in new_apps if n not in old_apps]
        removed = [n for n in old_apps if n not in new_apps]
        changed = [n for n in new_apps if n in old_apps and new_apps[n] != old_apps[n]]
        from .pool import AppPool

        ps.site = new
        ps.users = users
        for n in added:
            ps.pools[n] = AppPool(new_apps[n], self.registry.get(new_apps[n].type), ps)
        gone = {n: ps.pools.pop(n) for n in removed}
        for n in changed:
            pool = ps.pools[n]
            if new_apps[n].type != old_apps[n].type:
                pool.spawner = self.registry.get(new_apps[n].type)
            pool.configure(new_apps[n])
        self.site = new
        self.proxy.configure(new, ps.pools)
        for extra in self.extras:  # e.g. the file watcher follows added, removed and moved apps
            if hasattr(extra, "reconfigure"):
                extra.reconfigure(new)
        for n in added:
            ps.pools[n].ensure_min()
        for n, pool in gone.items():
            asyncio.get_running_loop().create_task(pool.stop(pool.shutdown_timeout))
        restarts = [ps.pools[n].restart("config reload") for n in changed]
        if restarts:
            await asyncio.gather(*restarts)
        log.info("reloaded %s: %d added, %d removed, %d changed", new.path, len(added), len(removed), len(changed))
        return {"ok": True, "added": added, "removed": removed, "changed": changed}

    # ------------------------------------------------------------------ control

    def request(self, cmd: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.commands.put_nowait((cmd, fut))
        return fut

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "config": str(self.site.path),
            "environment": self.site.config.environment,
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 1),
            "listen": self.proxy.urls() if self.proxy else [],
            "draining": self.draining,
            "max_pool_size": self.site.config.max_pool_size,
            "workers": self.poolset.live_count() if self.poolset else 0,
            "apps": self.poolset.snapshot() if self.poolset else [],
        }


def _user_policy(site: Site, announce: bool = True):
    """Who the workers run as (raises ConfigError for unknown users); logs it once when not root."""
    from .users import UserPolicy

    policy = UserPolicy.for_site(site)
    line = policy.summary() if announce else None
    if line:
        log.info(line)
    return policy


def run(site: Site, **kw) -> int:
    """Run the front process; uvloop when installed (PASSENGER_LITE_LOOP=asyncio to opt out)."""
    uvloop = None
    if os.environ.get("PASSENGER_LITE_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
    runtime = Runtime(site, **kw)
    if uvloop is not None:
        return uvloop.run(runtime.run())
    return asyncio.run(runtime.run())


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the passenger-lite command")
