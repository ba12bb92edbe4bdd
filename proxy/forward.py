"""One exchange through the proxy (`Exchange`): checkout of a worker, the request to it, its release.

The hot path is callbacks, not coroutines: a request without a body (or with a small one already
received) is routed, given a worker and written to a pooled keep-alive connection (upstream.py)
inside one `data_received` call; upstream.py parses the worker's response and writes each piece
to the client from the parser's callbacks. Tasks are only created for the slow cases: opening a
new connection to a worker, and streaming a request body.

Slow clients (issue 11): a response the client takes slower than the worker writes is held
(response_buffering: the client transport's buffer, then a temporary file, see buffers.py) and
the worker is given back when it has answered; without buffering, or for streams, the worker
connection stops reading while the client's transport is above its high-water mark. Request
bodies that did not arrive whole are read before checkout (front, request_buffering) or
streamed with `drain`. A client that leaves before the worker answered leaves an orphan: the
worker stays checked out until its response has ended. If a worker dies or breaks its framing
after the response has begun, the client connection is aborted: a truncated body is never
finished as if it were whole.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .buffers import Spill
from .checkout import Unavailable
from .headers import FORWARDING, REQUEST_DROP, connection_tokens
from .upstream import Upstream

if TYPE_CHECKING:
    from .checkout import Backend, Checkout
    from .reply import ReplyWriter

# request timings (access log, metrics): uvloop's loop.time() only moves in whole milliseconds
_clock = time.monotonic
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_MAX_RESENDS = 3               # attempts to place a request that no worker has read yet


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is at the other end of a client connection, made once per connection (front)."""

    peer_ip: str
    trusted: bool      # a trusted proxy (trusted_proxies): its forwarding headers stand
    scheme: str        # of the listener: http or https
    port: int
    ip: bytes          # peer_ip, encoded once
    fwd: bytes         # the X-Forwarded-Proto/Port and X-Real-IP lines for an untrusted client

    @classmethod
    def of(cls, peer_ip: str, trusted: bool, scheme: str, port: int) -> "ClientInfo":
        ip = peer_ip.encode()
        fwd = b"X-Forwarded-Proto: %s\r\nX-Forwarded-Port: %d\r\nX-Real-IP: %s\r\n" % (scheme.encode(), port, ip)
        return cls(peer_ip, trusted, scheme, port, ip, fwd)


NO_CLIENT = ClientInfo.of("", False, "http", 0)  # before connection_made (or a refused connection)


class _WorkerNotReading(Exception):
    """The worker stopped taking request body bytes for response_timeout."""


class Exchange:
    """One request and its response. Also the pool's waiter while queued for a worker."""

    __slots__ = (
        "front", "client", "pool", "msg", "method", "target", "host_header", "request_id",
        "body", "payload", "stream_body", "up_chunked", "ws",
        "worker", "conn", "status", "resp_started", "resp_bytes", "finished", "req_done",
        "queue_deadline", "response_deadline", "t0", "t_worker", "retried",
        "body_task", "app_name", "last_worker", "spool", "body_len", "rbuf", "rdone",
    )

    def __init__(self, front: "ReplyWriter", pool: "Checkout", msg, target: str, host_header: str):
        self.front = front
        self.client: ClientInfo = front.client
        self.pool = pool
        self.app_name = pool.name
        self.msg = msg
        self.method = msg.method
        self.target = target
        self.host_header = host_header
        self.request_id = ""
        self.body: bytes | None = None      # complete body to send with the head
        self.payload = None                 # StreamReader still to stream after the head
        self.stream_body = False
        self.up_chunked = False
        self.ws = False
        self.worker = None
        self.conn: Upstream | None = None
        self.status = 0
        self.resp_started = False
        self.resp_bytes = 0
        self.finished = False
        self.req_done = True
        self.queue_deadline = 0.0
        self.response_deadline = 0.0
        self.t0 = _clock()
        self.t_worker = 0.0
        self.retried = 0                    # times re-dispatched before any worker read it
        self.body_task = None
        self.last_worker = None             # who served it, for the access log (worker is cleared on release)
        self.spool: Spill | None = None     # a large request body read whole before checkout
        self.body_len = 0
        self.rbuf: Spill | None = None      # response bytes held for a slow client
        self.rdone = False                  # the worker's response has ended; rbuf still to be written

    @property
    def http_version(self) -> tuple[int, int]:
        """The client's HTTP version (major, minor), for observers."""
        return self.msg.version

    # ------------------------------------------------------------------ getting a worker

    def dispatch(self) -> None:
        try:
            worker = self.pool.acquire(self)
        except Unavailable as u:
            self.front.error(self, u.status, u.message, problem=u.problem)
            return
        if worker is not None:
            self.on_worker(worker)

    def on_worker(self, worker: "Backend") -> None:
        """Called by the pool, now or when a queued request gets its turn."""
        if self.finished:  # the client left while we waited; give the slot back
            self.pool.release(worker)
            return
        self.worker = self.last_worker = worker
        self.t_worker = _clock()
        idle = self.front.idle_conns.get(worker)
        if idle:
            idle.pop().send(self)
        else:
            self.front.loop.create_task(self._connect(worker))

    def on_unavailable(self, status: int, message: str, problem=None) -> None:
        """Called by the pool for a queued request it cannot serve (504 after queue_timeout...)."""
        if not self.finished:
            self.front.error(self, status, message, problem=problem)

    async def _connect(self, worker) -> None:
        loop = self.front.loop
        spare = self.front.proxy.idle.spare(worker)
        addr = worker.address
        try:
            if isinstance(addr, str):  # the usual case: the worker's private Unix socket
                _, conn = await loop.create_unix_connection(lambda: Upstream(worker, spare), addr)
            else:  # a worker that listens on a loopback port (command spawner)
                _, conn = await loop.create_connection(lambda: Upstream(worker, spare), *addr)
        except OSError as e:
            self.worker = None
            self.pool.release(worker, failed=True, reason=f"cannot connect to its socket: {e.strerror or e}")
            if self.finished:
                return
            if self.retried < _MAX_RESENDS:  # nothing was sent: another worker, or the queue, takes it
                self.retried += 1
                self.dispatch()
            else:
                self.front.error(self, 502, "The application's worker could not be reached.")
            return
        if self.finished:
            conn.transport.close()
            self.pool.release(worker)
            return
        conn.send(self)

    def resend(self, worker, exc: OSError) -> bool:
        """The worker's end broke before it read this request (EPIPE or ECONNRESET: a worker that
        has just died, or one that closed a keep-alive connection as we wrote to it). An
        idempotent request held whole is placed again (RFC 9110 9.2.2); the worker's idle
        connections are dropped, so the next try connects afresh, and a dead worker that
        refuses it leaves the rotation. A worker that read the request and died: 502."""
        if (self.resp_started or self.stream_body or self.spool is not None or self.finished
                or self.retried >= _MAX_RESENDS or self.method not in _IDEMPOTENT):
            return False
        self.retried += 1
        self.front.proxy.idle.drop(worker)
        self.conn = None
        self.release_worker()
        self.dispatch()
        return True

    # ------------------------------------------------------------------ the request

    def request_head(self) -> bytes:
        """The worker-bound request head: hop-by-hop and Connection-named headers dropped,
        X-Forwarded-* and X-Request-Id from what this hop saw (`client`)."""
        ex = self
        msg = ex.msg
        client = ex.client
        parts = [b"%s %s HTTP/1.1\r\n" % (ex.method.encode(), ex.target.encode("utf-8", "surrogateescape"))]
        drop = REQUEST_DROP
        conn_named = None
        if "Connection" in msg.headers:
            conn_named = connection_tokens([v.encode("latin-1") for v in msg.headers.getall("Connection")])
        trusted = client.trusted
        rid = None
        xff = None
        seen = None
        for name, value in msg.raw_headers:
            ln = name.lower()
            if ln in drop:
                if trusted and ln in FORWARDING:
                    if seen is None:
                        seen = set()
                    seen.add(ln)
                    if ln == b"x-forwarded-for":
                        xff = value if xff is None else xff + b", " + value
                    else:
                        parts.append(b"%s: %s\r\n" % (name, value))
                continue
            if b"_" in name or (conn_named is not None and ln in conn_named):
                continue
            if ln == b"x-request-id":
                if rid is not None or len(value) > 200:
                    continue
                rid = value
            parts.append(b"%s: %s\r\n" % (name, value))
        if rid is None:
            ex.request_id = ex.front.proxy.next_request_id()
            parts.append(b"X-Request-Id: %s\r\n" % ex.request_id.encode())
        else:
            ex.request_id = rid.decode("latin-1")
        ip = client.ip
        host = ex.host_header.encode("latin-1")
        if not trusted:
            parts.append(b"Host: %s\r\nX-Forwarded-Host: %s\r\nX-Forwarded-For: %s\r\n" % (host, host, ip))
            parts.append(client.fwd)
        else:
            _trusted_forwarding(client, parts, host, ip, xff, seen or ())
        if ex.ws:
            parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        if ex.stream_body:
            if ex.up_chunked:
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                parts.append(b"Content-Length: %s\r\n" % msg.headers["Content-Length"].encode())
        elif ex.spool is not None:
            parts.append(b"Content-Length: %d\r\n" % ex.body_len)
        elif ex.body is not None:
            parts.append(b"Content-Length: %d\r\n" % len(ex.body))
        parts.append(b"\r\n")
        return b"".join(parts)

    async def pump_body(self, conn: "Upstream") -> None:
        """Stream the rest of the request body to the worker, with backpressure both ways
        (request_buffering off and a body past front._BUFFER_BODY)."""
        front = self.front
        payload = self.payload
        t = conn.transport
        chunked = self.up_chunked
        limit = front.proxy.max_body
        sent = len(self.body or b"")
        timeout = front.proxy.client_body_timeout
        try:
            while True:
                async with asyncio.timeout(timeout):
                    chunk = await payload.readany()
                if not chunk:
                    break
                sent += len(chunk)
                if sent > limit:
                    self._body_failed(413, "The request body is larger than this server accepts.")
                    return
                if self.finished or conn.transport is None:
                    return
                if chunked:
                    t.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    t.write(chunk)
                if conn.write_paused:
                    await self._drain(conn)
            if chunked and conn.transport is not None:
                t.write(b"0\r\n\r\n")
            self._body_sent()
        except _WorkerNotReading:
            self._worker_not_reading(conn)
        except TimeoutError:
            self._body_failed(408, "The request body took too long to arrive.")
        except asyncio.CancelledError:
            raise
        except Exception:  # client went away or sent a broken body: the worker must not see more
            self._body_failed(400, "The request body was cut short or malformed.")
        finally:
            self.body_task = None

    async def pump_spool(self, conn: "Upstream") -> None:
        """Write a spooled request body to the worker, at the worker's pace."""
        spool = self.spool
        try:
            while True:
                t = conn.transport
                if self.finished or t is None or conn.ex is not self:
                    return
                data = spool.take()
                if not data:
                    break
                t.write(data)
                if conn.write_paused:
                    await self._drain(conn)
            self._body_sent()
        except _WorkerNotReading:
            self._worker_not_reading(conn)
        except asyncio.CancelledError:
            raise
        except ConnectionError:
            pass  # the worker connection was lost: Upstream.connection_lost answers the client
        except Exception as e:  # noqa: BLE001 - the temporary file failed us (disk): never send half
            self._body_failed(503 if not self.resp_started else 0, f"The request body could not be read back: {e}")
        finally:
            self.body_task = None

    async def _drain(self, conn: "Upstream") -> None:
        try:
            async with asyncio.timeout(self.pool.response_timeout):
                await conn.drain()
        except TimeoutError:
            raise _WorkerNotReading from None

    def _body_sent(self) -> None:
        """The whole request is with the worker: from now on response_timeout runs (item 4)."""
        self.req_done = True
        if not self.resp_started:
            self.response_deadline = self.front.loop.time() + self.pool.response_timeout

    def _worker_not_reading(self, conn: "Upstream") -> None:
        """The worker took no body bytes for response_timeout: 504, and a concurrency-1 worker,
        stuck with half a request, is replaced."""
        w = self.worker
        why = f"the worker read no request body for {self.pool.response_timeout:g} s"
        if conn.ex is self:
            conn.ex = None
        if conn.transport is not None:
            conn.transport.abort()
        self.release_worker(failed=w is not None and w.concurrency == 1, reason=why)
        if not self.finished:
            if self.resp_started:
                self.front.abort(self)
            else:
                self.front.error(self, 504, "", detail=why, close=True)

    def _body_failed(self, status: int, message: str) -> None:
        """The request body cannot be completed: the worker's connection is cut (the worker sees a
        short body, never a whole one) and the worker is given back (issue 11 item 1)."""
        conn = self.conn
        if conn is not None:
            if conn.ex is self:
                conn.ex = None
            if conn.transport is not None:
                conn.transport.abort()
        self.release_worker()
        if not self.finished:
            if self.resp_started or not status:
                self.front.abort(self)
            else:
                self.front.error(self, status, message, close=True)

    # ------------------------------------------------------------------ the end

    def release_worker(self, failed: bool = False, reason: str = "") -> None:
        w = self.worker
        if w is not None:
            self.worker = None
            self.pool.release(w, failed=failed, reason=reason)


def _trusted_forwarding(client: ClientInfo, parts: list, host: bytes, ip: bytes, xff: bytes | None, seen) -> None:
    """From a trusted proxy, the forwarding headers it sent stand (copied above); the ones it
    did not send are filled in from this hop, so none is missing or doubled."""
    parts.append(b"Host: %s\r\nX-Forwarded-For: %s\r\n" % (host, ip if xff is None else xff + b", " + ip))
    if b"x-forwarded-host" not in seen:
        parts.append(b"X-Forwarded-Host: %s\r\n" % host)
    if b"x-forwarded-proto" not in seen:
        parts.append(b"X-Forwarded-Proto: %s\r\n" % client.scheme.encode())
    if b"x-forwarded-port" not in seen:
        parts.append(b"X-Forwarded-Port: %d\r\n" % client.port)
    if b"x-real-ip" not in seen:
        # the client as the trusted proxy saw it: the last address it added (as nginx's realip)
        parts.append(b"X-Real-IP: %s\r\n" % (xff.rpartition(b",")[2].strip() if xff else ip))
