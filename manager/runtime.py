"""Wiring and the start/stop order of one front process.

Start: lock the instance folder -> watchdog -> pools -> extras (access log, metrics, file
watcher) -> proxy listeners -> control socket -> min_processes spawned. Stop (SIGTERM, SIGINT,
`passenger-lite stop`): control socket -> listeners closed -> in-flight requests finish (up to
shutdown_timeout; the access log, metrics and /health, which says `draining`, still see them) ->
extras -> workers stopped (TERM, then KILL) -> watchdog -> lock. Each step is undone even if a
later one failed. An extra has async start() and stop(), and may have reconfigure(site), called
after a config reload.

Signal handlers only put a command on a queue (stop, reload, reopen: SIGUSR1 reopens the log
files after logrotate); the main loop acts on it (gunicorn's rule).
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
from .output import Printer, reopen_logs
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
        _raise_open_files_limit(self.site)
        async with contextlib.AsyncExitStack() as stack:
            # first in, last out: a second SIGTERM during the stop only queues a command, it does not
            # kill the manager halfway through stopping its workers
            for sig, cmd in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"), (signal.SIGHUP, "reload"),
                             (signal.SIGUSR1, "reopen")):
                loop.add_signal_handler(sig, self.commands.put_nowait, (cmd, None))
                stack.callback(loop.remove_signal_handler, sig)
            self.instance = Instance(self.site.path)
            self.instance.lock()
            stack.callback(self.instance.unlock)
            watchdog = Watchdog()
            log.info(watchdog.start(self.instance.workers, self.instance.dir))
            stack.callback(watchdog.close)
            stack.callback(watchdog.stop_descendants)  # after the workers stopped, before the watchdog
            users = _user_policy(self.site)
            self.poolset = PoolSet(self.site, self.registry, self.instance.workers, watchdog, self.printer, users)
            stack.push_async_callback(self._stop_pools)
            self.proxy = Proxy(self.site, self.poolset.pools, loop)
            extras, self.extras = self._build_extras(), []
            stack.push_async_callback(self._stop_extras)  # those running at the end (reload swaps some)
            for extra in extras:  # before the listeners, stopped after the drain: they see every request
                await extra.start()
                self.extras.append(extra)
            self.poolset.observers.append(self.proxy.backend_gone)
            await self.proxy.listen()
            stack.push_async_callback(self._drain_proxy)
            from .control import ControlServer

            control = ControlServer(self)
            await control.start(self.instance.control)
            stack.push_async_callback(control.stop)
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
                if cmd == "reopen":
                    self.reopen_logs()
            await self._drain_proxy()  # before the extras stop: they see the last requests
        log.info("stopped")
        return 0

    def _build_extras(self) -> list:
        from .accesslog import AccessLog
        from .watch import Watcher

        access = AccessLog.from_site(self)
        metrics = None
        if self.site.config.metrics_listen:  # prometheus_client is imported only when metrics are on
            from .metrics import Metrics

            metrics = Metrics.from_site(self)
        return [x for x in (access, metrics, Watcher(self)) if x is not None]

    def reopen_logs(self) -> None:
        """SIGUSR1: the access log and log_file are opened again (logrotate moved them)."""
        from .accesslog import AccessLog

        reopen_logs([x for x in self.extras if isinstance(x, AccessLog)] + [self.printer.stream])

    async def _stop_extras(self) -> None:
        for extra in reversed(self.extras):
            try:
                await extra.stop()
            except Exception:  # noqa: BLE001 - the others must stop too
                log.exception("stopping %s failed", type(extra).__name__)
        self.extras = []

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
            new = await asyncio.to_thread(configmod.load, self.site.path, self.registry)  # file reads: off the loop
            users = _user_policy(new, announce=False)
        except ConfigError as e:
            log.error("reload rejected; the running config stays:\n%s", e)
            return {"ok": False, "error": str(e)}
        old = self.site
        if self.dev:  # `start --dev` outranks the file's environment, on reload too
            new.config.environment = "development"
        from .sitereload import SiteReload, apps_to_restart

        site_keys = SiteReload(self, old, new)
        try:
            site_keys.prepare()  # opens new log files: a failure rejects the reload before any change
        except OSError as e:
            log.error("reload rejected; the running config stays: %s", e.strerror or e)
            return {"ok": False, "error": f"{new.path}: {e.strerror or e}"}
        if site_keys.restart_needed:
            log.warning("reload: %s changed; that takes a restart (stop, then start) to apply",
                        ", ".join(site_keys.restart_needed))
        if "listen" in site_keys.restart_needed:  # listeners are kept as they are until a full restart
            new.addresses = old.addresses
        ps = self.poolset
        old_apps = {a.name: a for a in old.apps}
        new_apps = {a.name: a for a in new.apps}
        added = [n for n in new_apps if n not in old_apps]
        removed = [n for n in old_apps if n not in new_apps]
        changed = [n for n in new_apps if n in old_apps and new_apps[n] != old_apps[n]]
        changed += [n for n in apps_to_restart(old, new, self.poolset.users, users, site_keys.keys)
                    if n not in changed]  # environment or default_user: their workers are stale
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
        await site_keys.apply()  # log_file, log_format, access_log, metrics_listen
        for n in added:
            ps.pools[n].ensure_min()
        for n, pool in gone.items():
            asyncio.get_running_loop().create_task(pool.stop(pool.shutdown_timeout))
        restarts = [ps.pools[n].restart("config reload") for n in changed]
        if restarts:
            await asyncio.gather(*restarts)
        log.info("reloaded %s: %d added, %d removed, %d changed", new.path, len(added), len(removed), len(changed))
        return {"ok": True, "added": added, "removed": removed, "changed": changed,
                "site": site_keys.live + site_keys.reopened, "restart_needed": site_keys.restart_needed,
                "errors": site_keys.errors}

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
            "workers": self.poolset.process_count() if self.poolset else 0,
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


def _raise_open_files_limit(site: Site) -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (often 1024 of 20,000+): past it new clients get an
    empty reply and nothing is logged, so max_connections could never take effect. Workers
    inherit it. One log line says the limit, with a warning when max_connections is above it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    was = soft
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    raised = f" (raised from {was})" if soft != was else ""
    need = site.config.max_connections * max(1, len(site.addresses))
    if need + 100 > soft:
        log.warning("open files limit %d%s is below max_connections (%d) x %d listener(s): clients past "
                    "about %d connections get an empty reply; raise the hard limit (ulimit -Hn, LimitNOFILE=)",
                    soft, raised, site.config.max_connections, max(1, len(site.addresses)), max(soft - 100, 0))
    else:
        log.info("open files limit %d%s", soft, raised)


def run(site: Site, **kw) -> int:
    """Run the front process; uvloop when installed (PASSENGER_LITE_LOOP=asyncio to opt out)."""
    uvloop = None
    if os.environ.get("PASSENGER_LITE_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
    runtime = Runtime(site, **kw)
    from .loopwatch import watched  # PASSENGER_LITE_DEBUG_LOOP (tests): log a blocked loop

    if uvloop is not None:
        return uvloop.run(watched(runtime.run()))
    return asyncio.run(watched(runtime.run()))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the passenger-lite command")
