"""The control socket: small JSON over HTTP on a Unix socket in the private runtime folder.

    GET  /status          the manager's state (see README, `passenger-lite status --json`)
    GET  /invariants      AppPool.check_invariants() of every app, against the proxy's open exchanges
    POST /restart/{app}   rolling restart of one app
    POST /reload          re-read the config file
    POST /stop            graceful stop

Only the manager's own user (or root) may talk to it: the folder is 0700 and every connection's
peer credentials (SO_PEERCRED) are checked as well.
"""
from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from aiohttp import web


@web.middleware
async def _peer_check(request: web.Request, handler):
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid not in (0, os.getuid()):
            return web.json_response({"ok": False, "error": "not allowed"}, status=403)
    return await handler(request)


class ControlServer:
    def __init__(self, runtime):
        self.runtime = runtime
        self.runner: web.AppRunner | None = None
        self.path: Path | None = None

    async def start(self, path: Path) -> None:
        app = web.Application(middlewares=[_peer_check])
        app.router.add_get("/status", self.status)
        app.router.add_get("/invariants", self.invariants)
        app.router.add_post("/restart/{app}", self.restart)
        app.router.add_post("/reload", self.reload)
        app.router.add_post("/stop", self.stop_cmd)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        site = web.UnixSite(self.runner, str(path))
        await site.start()
        os.chmod(path, 0o600)
        self.path = path

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.path is not None:
            try:
                self.path.unlink()
            except OSError:
                pass

    async def status(self, request: web.Request) -> web.Response:
        import psutil

        from .lifecycle import rss_of

        if self.runtime.poolset is not None:  # RSS is measured now, worker plus its children
            for pool in self.runtime.poolset.pools.values():
                for w in pool.workers:
                    w.rss = rss_of(w.pid, psutil) if w.alive else 0
        return web.json_response(self.runtime.status())

    async def invariants(self, request: web.Request) -> web.Response:
        rt = self.runtime
        held: dict = {}
        if rt.proxy is not None:  # every exchange that holds a worker: a connection's, a WebSocket's
            exchanges = {id(c.ex): c.ex for c in rt.proxy.connections if c.ex is not None}
            exchanges.update((id(t.ex), t.ex) for t in rt.proxy.tunnels)
            exchanges.update((id(ex), ex) for ex in rt.proxy.orphans)  # their clients left
            for ex in exchanges.values():
                if ex.worker is not None:
                    held[ex.worker] = held.get(ex.worker, 0) + 1
        problems = {}
        for name, pool in (rt.poolset.pools.items() if rt.poolset is not None else ()):
            found = pool.check_invariants({w: n for w, n in held.items() if w.app == name})
            if found:
                problems[name] = found
        return web.json_response({"ok": not problems, "problems": problems})

    async def restart(self, request: web.Request) -> web.Response:
        name = request.match_info["app"]
        pool = self.runtime.poolset.pools.get(name)
        if pool is None:
            known = ", ".join(sorted(self.runtime.poolset.pools))
            return web.json_response({"ok": False, "error": f"no app named {name!r} (apps: {known})"}, status=404)
        ok = await pool.restart("restart command")
        f = pool.last_failure
        return web.json_response({"ok": ok, "app": name, "result": pool.last_restart_result,
                                  "error": None if ok else (f.message if f else pool.last_restart_result)})

    async def reload(self, request: web.Request) -> web.Response:
        result = await self.runtime.request("reload")
        return web.json_response(result, status=200 if result.get("ok") else 400)

    async def stop_cmd(self, request: web.Request) -> web.Response:
        self.runtime.commands.put_nowait(("stop", None))
        return web.json_response({"ok": True})
