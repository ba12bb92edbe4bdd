"""The front process's HTTP side: listeners, the routing table, timeouts, observers.

`Proxy` knows the app pools only through proxy/checkout.py's `Checkout` (acquire, release, cancel
and a few settings); it never starts or stops a worker.
"""
from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import time
import os
import secrets
from typing import Callable

from passenger_lite.manager.config import Address, Site

from .front import FrontProtocol
from . import static
from .pages import Pages
from .router import Mount, Router
from .sockets import remove_stale_socket
from .tls import ListenerTLS, TLSError
from .upstream import IdlePool

log = logging.getLogger("passenger_lite.proxy")
SWEEP_INTERVAL = 0.5


class Listener:
    def __init__(self, address: Address):
        self.address = address
        self.scheme = "https" if address.tls else "http"
        self.port = address.port
        self.count = 0
        self.server: asyncio.AbstractServer | None = None
        self.tls: ListenerTLS | None = None
        self.refused_n = 0          # connections refused at max_connections since the last log line
        self.refused_logged = -1e9

    def refused(self, limit: int) -> None:
        """A connection got 503 at max_connections: say so, at most every 10 s (with the count)."""
        self.refused_n += 1
        now = time.monotonic()
        if now - self.refused_logged >= 10:
            log.warning("%s: %d connection(s) refused with 503: max_connections (%d) reached",
                        self, self.refused_n, limit)
            self.refused_n = 0
            self.refused_logged = now

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}" if self.address.kind == "tcp" else str(self.address)


class Proxy:
    def __init__(self, site: Site, pools: dict, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop or asyncio.get_running_loop()
        self.connections: set[FrontProtocol] = set()
        self.tunnels: set = set()
        self.orphans: set = set()  # exchanges whose client left while their worker still runs them
        self.host_cache: dict[str, str] = {}
        self.idle = IdlePool()         # keep-alive connections to workers, per backend
        self.listeners: list[Listener] = []
        self.stopping = False
        self.observers: list[Callable] = []
        self.early_observers: list[Callable] = []
        self._rid_prefix = secrets.token_hex(4)
        self._rid = itertools.count(1)
        self._sweeper: asyncio.TimerHandle | None = None
        self.configure(site, pools)

    # ------------------------------------------------------------------ configuration

    def configure(self, site: Site, pools: dict) -> None:
        """Take a (new) site config and its pools; listeners are not touched (see reload)."""
        c = site.config
        self.site = site
        self.pages = Pages(site.development)
        self.max_header_size = c.max_header_size
        self.max_headers = c.max_headers
        self.max_connections = c.max_connections
        self.max_body = site.client_max_body_size
        self.client_header_timeout = c.client_header_timeout
        self.client_body_timeout = c.client_body_timeout
        self.send_timeout = c.send_timeout
        self.keepalive_timeout = c.keepalive_timeout
        self.websocket_idle_timeout = c.websocket_idle_timeout
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in c.trusted_proxies]
        self._trusted_cache: dict[str, bool] = {}
        self.router: Router = Router(Mount(tuple(a.hosts), a.path, pools[a.name]) for a in site.apps)
        self.statics = static.build(site.apps, pools)  # pool -> StaticFiles, only apps that have some
        self.https_port = next((a.port for a in site.addresses if a.tls and a.kind == "tcp"), 0)
        self._reload_tls(site)

    def _reload_tls(self, site: Site) -> None:
        """On reload: the listeners stay, their certificates are read again (renewals)."""
        new = {str(a): a for a in site.addresses}
        for lst in self.listeners:
            a = new.get(str(lst.address))
            if lst.tls is None or a is None or a.tls is None:
                continue
            try:
                lst.tls.reload(a.tls)
            except TLSError as e:
                log.error("%s: %s; the certificates in use stay", lst, e)
        if not self.https_port:
            self.https_port = next((lst.port for lst in self.listeners if lst.scheme == "https"), 0)

    def is_trusted(self, ip: str) -> bool:
        if not self._trusted:
            return False
        hit = self._trusted_cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
                hit = any(addr in n for n in self._trusted)
            except ValueError:
                hit = False
            if len(self._trusted_cache) > 4096:
                self._trusted_cache.clear()
            self._trusted_cache[ip] = hit
        return hit

    def remember_host(self, raw: str, host: str) -> None:
        if len(self.host_cache) > 4096:
            self.host_cache.clear()
        self.host_cache[raw] = host

    def next_request_id(self) -> str:
        return f"{self._rid_prefix}-{next(self._rid):x}"

    # ------------------------------------------------------------------ listening

    async def listen(self) -> None:
        """Bind every configured address. Raises OSError naming the address on failure."""
        for addr in self.site.addresses:
            lst = Listener(addr)
            factory = lambda lst=lst: FrontProtocol(self, lst)  # noqa: E731
            try:
                ctx = None
                tls = {}
                if addr.tls:
                    lst.tls = ListenerTLS(addr.tls)
                    ctx = lst.tls.context
                    # a client that never finishes its handshake is not kept past the header timeout
                    tls = {"ssl": ctx, "ssl_handshake_timeout": self.client_header_timeout}
                if addr.kind == "unix":
                    remove_stale_socket(addr.path)
                    lst.server = await self.loop.create_unix_server(factory, addr.path, backlog=1024, **tls)
                    os.chmod(addr.path, 0o666)
                else:
                    lst.server = await self.loop.create_server(
                        factory, addr.host, addr.port, backlog=1024, reuse_address=True, **tls)
                    if addr.port == 0:  # ephemeral: the listener has the port we got (status, smoke); the
                        # address stays as configured, so a reload of the same config is no `listen` change
                        lst.port = lst.server.sockets[0].getsockname()[1]
            except OSError as e:
                raise OSError(e.errno, f"cannot listen on {addr}: {e.strerror or e}") from None
            self.listeners.append(lst)
        if self.https_port == 0:
            self.https_port = next((lst.port for lst in self.listeners if lst.scheme == "https"), 0)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def urls(self) -> list[str]:
        out = []
        for lst in self.listeners:
            a = lst.address
            if a.kind == "unix":
                out.append(f"unix:{a.path}")
            else:
                host = "127.0.0.1" if a.host in ("0.0.0.0", "") else ("[::1]" if a.host == "::" else a.host)
                out.append(f"{lst.scheme}://{host}:{lst.port}")
        return out

    def _sweep(self) -> None:
        now = self.loop.time()
        for st in self.statics.values():
            try:
                st.refresh()  # new top-level names in public/, a swapped `current` symlink
            except Exception:  # noqa: BLE001 - a broken folder must not stop the timeouts
                log.exception("refreshing static folders failed")
        for c in list(self.connections):
            try:
                c.sweep(now)
            except Exception:  # noqa: BLE001 - one broken connection must not stop the timeouts
                log.exception("timeout sweep failed for a connection")
        if not self.stopping or self.connections:
            self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    # ------------------------------------------------------------------ stopping

    async def close_listeners(self) -> None:
        self.stopping = True
        for lst in self.listeners:
            if lst.server is not None:
                lst.server.close()
        for lst in self.listeners:
            if lst.address.kind == "unix":
                try:
                    os.unlink(lst.address.path)
                except OSError:
                    pass

    def busy(self) -> int:
        return sum(1 for c in self.connections if c.ex is not None or c.pending)

    async def drain(self, timeout: float) -> None:
        """Let in-flight requests finish (up to `timeout`), then close what is left."""
        self.stopping = True
        for c in list(self.connections):
            if c.ex is None and not c.pending and c.tunnel is None and c.transport is not None:
                c.closing = True
                c.transport.close()  # idle keep-alive connections go now
        deadline = self.loop.time() + timeout
        while self.busy() - len(self.tunnels) > 0 and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for t in list(self.tunnels):
            t.go_away(1001)
        while self.tunnels and self.loop.time() < deadline + 2:
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()

    def backend_gone(self, backend) -> None:
        """The manager's hook (PoolSet.observers): a worker stops or has exited; its idle
        connections are closed (connections serving a request end with it)."""
        self.idle.drop(backend)

    # ------------------------------------------------------------------ observers (logs, metrics)

    def add_observer(self, observe: Callable, observe_early: Callable) -> None:
        """observe(ex, status, aborted) per finished exchange; observe_early(status) per request
        answered before routing."""
        self.observers.append(observe)
        self.early_observers.append(observe_early)

    def remove_observer(self, observe: Callable, observe_early: Callable) -> None:
        for lst, fn in ((self.observers, observe), (self.early_observers, observe_early)):
            if fn in lst:
                lst.remove(fn)

    def observe(self, ex, status: int, aborted: bool = False) -> None:
        for o in self.observers:
            o(ex, status, aborted)

    def observe_early(self, status: int) -> None:
        for o in self.early_observers:
            o(status)

    def log_bad_request(self, ip: str, status: int, why: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s from %s: %s", status, ip, why)

    def log_upstream_error(self, ex, status: int, detail: str) -> None:
        log.warning("%s %s %s -> %d: %s (request %s)", ex.app_name, ex.method, ex.target[:200], status,
                    detail, ex.request_id)

