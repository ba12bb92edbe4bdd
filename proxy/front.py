"""The client side of the proxy: parsing, front-door checks, body buffering and pipelining.

Requests are parsed by aiohttp's C parser (llhttp) used directly, without aiohttp's web server
objects: the server costs about 2.5 times the parser alone per request on this machine. The
rules a front door needs (RFC 9110/9112 and what nginx learned) are applied here before any
worker sees the request: Host and target checks, hop-by-hop and Connection-named headers
removed, underscore header names dropped, X-Forwarded-* set from what we saw ourselves.

Pipelined requests are answered in order: one exchange at a time per connection. A request
then goes one way: router.py -> forward.py (Exchange) -> the pool -> upstream.py; responses
are written through reply.py (`ReplyWriter`, this protocol's base class).
"""
from __future__ import annotations

import asyncio
from collections import deque

from aiohttp import http_exceptions
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpVersion10, HttpVersion11
from aiohttp.streams import EMPTY_PAYLOAD

from .buffers import REQUEST_MEMORY, Spill
from .forward import NO_CLIENT, ClientInfo, Exchange
from .headers import BadTarget, canonical_path, normalise_host
from .reply import ReplyWriter, drop_buffers
from .tunnel import Tunnel

try:  # llhttp through aiohttp's C extension; require_c_parser() refuses to start without it
    from aiohttp._http_parser import HttpRequestParser
except ImportError:
    HttpRequestParser = None

_READ_LIMIT = 2 ** 16          # StreamReader buffering of request bodies (high water: 2x)
_BUFFER_BODY = 64 * 1024       # bodies up to this size are read fully before a worker is taken
_PIPELINE_MAX = 32             # parsed requests waiting their turn before we stop reading
_AFTER_CLOSE = "Data after `Connection: close`"  # llhttp's error for bytes after a closing request


class CParserMissing(RuntimeError):
    """aiohttp's C HTTP parser cannot be used: we do not serve on the weaker pure-Python one."""


def require_c_parser() -> None:
    """Start-up check: the request parser is aiohttp's compiled llhttp extension."""
    import importlib.machinery
    import sys

    mod = sys.modules.get("aiohttp._http_parser")
    so = getattr(mod, "__file__", "") or ""
    if HttpRequestParser is None or not so.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        import aiohttp

        raise CParserMissing(
            f"aiohttp's C HTTP parser (aiohttp._http_parser) cannot be imported (aiohttp {aiohttp.__version__} "
            f"in {aiohttp.__path__[0]}). passenger-lite does not serve on the pure-Python parser, which lets "
            "more malformed requests through. Reinstall aiohttp from a binary wheel for this Python "
            "(pip install --force-reinstall --only-binary aiohttp aiohttp), and do not set AIOHTTP_NO_EXTENSIONS "
            "when installing it.")


class FrontProtocol(ReplyWriter, BaseProtocol):
    """One client connection: parse, front-door checks, body buffering, pipelining, timeouts.
    `proxy` is server.Proxy and `listener` its server.Listener (not imported: server.py imports this)."""

    def __init__(self, proxy, listener):
        super().__init__(proxy.loop)
        self.loop = proxy.loop
        self.proxy = proxy
        self.idle_conns = proxy.idle.conns  # backend -> its idle worker connections (upstream.py)
        self.listener = listener
        self._parser = HttpRequestParser(
            self, self.loop, _READ_LIMIT, max_line_size=proxy.max_header_size,
            max_field_size=proxy.max_header_size, max_headers=proxy.max_headers, auto_decompress=False)
        self.pending: deque = deque()
        self.ex: Exchange | None = None
        self.keep_alive = True
        self.http11 = True
        self.closing = False
        self.in_next = False
        self.partial_since = 0.0
        self.idle_since = 0.0
        self.client: ClientInfo = NO_CLIENT  # who is at the other end, made once in connection_made
        self.tunnel = None
        self.ws_tail = b""
        self.paused_at = 0.0           # when the client last stopped taking response bytes

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        lst = self.listener
        lst.count += 1
        self.proxy.connections.add(self)
        self.idle_since = self.loop.time()
        if lst.count > self.proxy.max_connections:
            lst.refused(self.proxy.max_connections)
            self.keep_alive = False
            self._send_error(503, "This server has too many open connections.")
            return
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else "127.0.0.1"
        self.client = ClientInfo.of(ip, self.proxy.is_trusted(ip), lst.scheme, lst.port)

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        self.listener.count -= 1
        self.proxy.connections.discard(self)
        self.closing = True
        if self.tunnel is not None:
            self.tunnel.front_lost()
        ex = self.ex
        if ex is not None and not ex.finished:
            self._abandon(ex)
        for _, payload in self.pending:
            payload.feed_eof()
        self.pending.clear()
        try:
            self._parser.feed_eof()
        except Exception:  # noqa: BLE001 - a half-sent request on a closed connection: nothing to answer
            pass

    def _abandon(self, ex: Exchange) -> None:
        """The client went away: stop the exchange and give the worker back."""
        ex.finished = True
        self.ex = None
        if ex.body_task is not None:
            ex.body_task.cancel()
        conn = ex.conn
        if conn is not None:
            if (conn.ex is ex and not ex.resp_started and ex.req_done and not ex.ws
                    and conn.transport is not None):
                # the worker still runs the request: it stays checked out until it has answered
                conn.adopt_orphan(ex)
            else:
                # it is writing its answer (the reset ends that) or has half a request body
                if conn.ex is ex:
                    conn.ex = None
                if conn.transport is not None:
                    conn.transport.abort()
                ex.release_worker()
        elif ex.worker is None:
            ex.pool.cancel(ex)
        if ex.rbuf is not None or ex.spool is not None:
            drop_buffers(ex)
        self.proxy.observe(ex, 499)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.paused_at = self.loop.time()

    def resume_writing(self) -> None:
        super().resume_writing()
        ex = self.ex
        if ex is not None:
            if ex.rbuf is not None:
                self._write_held(ex)
            elif ex.conn is not None:
                ex.conn.resume_for_front()
        if self.tunnel is not None:
            self.tunnel.resume_from_front()

    @property
    def write_paused(self) -> bool:
        return self._paused

    def _write_held(self, ex: Exchange) -> None:
        """The client takes bytes again: write what was held for it (response_buffering)."""
        rbuf = ex.rbuf
        t = self.transport
        try:
            while t is not None and not self._paused:
                data = rbuf.take()
                if not data:
                    break
                t.write(data)
        except OSError as e:  # the temporary file failed (disk): the response cannot be completed
            self.proxy.log_upstream_error(ex, ex.status, f"the response buffer failed: {e}")
            ex.release_worker()
            conn = ex.conn
            if conn is not None:
                conn.ex = None
                if conn.transport is not None:
                    conn.transport.abort()
            self.abort(ex)
            return
        if rbuf.size:
            return
        if ex.rdone:
            self.finish(ex)
        elif ex.conn is not None:
            ex.conn.resume_for_front()

    # ------------------------------------------------------------------ reading requests

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_front(data)
            return
        if self.closing:
            return
        if self._upgraded:  # waiting for the worker's 101: keep what the client sends early
            self.ws_tail += data
            if len(self.ws_tail) > _READ_LIMIT and self.transport is not None:
                self.transport.pause_reading()  # the tunnel resumes it
            return
        fresh = not self.partial_since and self.ex is None and not self.pending
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except http_exceptions.HttpProcessingError as e:
            if _AFTER_CLOSE not in str(e) or not self._after_close(data, fresh):
                self._parse_error(e)
            return
        if messages:
            self.partial_since = 0.0
            self.pending.extend(messages)
            if upgraded:
                self._upgraded = True
                self.ws_tail = tail
            self._next()
            if len(self.pending) > _PIPELINE_MAX and self.transport is not None:
                self.transport.pause_reading()
        elif fresh:
            # the start of a request head: the header timeout runs from here
            self.partial_since = self.loop.time()
            self._check_request_line(data)

    def _after_close(self, data: bytes, fresh: bool) -> bool:
        """Bytes came after a request that closes the connection (Connection: close, or HTTP/1.0
        without keep-alive). As nginx does, that request (and any before it) is served, then the
        connection closes; the bytes after it are never parsed. llhttp refuses the whole read
        (its messages are lost with the error), so a read that began between two requests
        (`fresh`: nothing in flight, queued or half-received) is parsed again by a parser that
        pauses after each message, stopping after the closing one. Runs only on that error.
        False: none of that applies (the read may have begun inside a message): 400 as before."""
        ex = self.ex
        if (self.pending and self.pending[-1][0].should_close) or (ex is not None and ex.msg.should_close):
            return True  # more bytes after the closing request we already have: ignored
        if not fresh:
            return False
        parser = HttpRequestParser(
            self, self.loop, _READ_LIMIT, max_line_size=self.proxy.max_header_size,
            max_field_size=self.proxy.max_header_size, max_headers=self.proxy.max_headers,
            auto_decompress=False, max_msg_queue_size=1)  # pauses after each message
        got = []
        try:
            messages, upgraded, _ = parser.feed_data(data)
            while messages and not upgraded:
                got += messages
                if messages[-1][0].should_close:
                    break
                parser.message_consumed()
                messages, upgraded, _ = parser.feed_data(b"")
        except http_exceptions.HttpProcessingError:
            return False
        if not got or not got[-1][0].should_close:
            return False
        self.partial_since = 0.0
        self.pending.extend(got)
        self._next()
        return True

    def _check_request_line(self, data: bytes) -> None:
        """A request line llhttp would wait on forever (HTTP/0.9 has no version): answer now."""
        nl = data.find(b"\n")
        if nl < 0:
            return
        line = data[:nl].rstrip(b"\r")
        _, sep, version = line.rpartition(b" HTTP/")
        if not sep:
            self._send_error(400, "HTTP/0.9 requests are not supported.")
        elif version[:1].isdigit() and version[:1] != b"1":
            self._send_error(505, "")

    def _parse_error(self, e: http_exceptions.HttpProcessingError) -> None:
        text = str(e)
        status = 400
        if isinstance(e, http_exceptions.LineTooLong):
            status = 414 if isinstance(e.args[0], bytearray) else 431
        elif "Too many headers" in text:
            status = 431
        elif "Transfer-Encoding" in text and "Content-Length" not in text:
            status = 501
        elif "Invalid HTTP version" in text or "Pause on PRI" in text:  # HTTP/3.0, 1.2, the h2 preface
            status = 505
        self.proxy.log_bad_request(self.client.peer_ip, status, text.splitlines()[0] if text else "")
        self._send_error(status, "")

    def _next(self) -> None:
        """Start queued requests one at a time; those that end at once let the next one start."""
        if self.in_next:
            return
        self.in_next = True
        try:
            while self.ex is None and self.pending and not self.closing:
                msg, payload = self.pending.popleft()
                self._start(msg, payload)
        finally:
            self.in_next = False
        if self.ex is None and not self.pending:
            self.idle_since = self.loop.time()
            if self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def _start(self, msg, payload) -> None:
        proxy = self.proxy
        version = msg.version
        if version is not HttpVersion11 and version != HttpVersion11:
            if version == HttpVersion10:
                self.http11 = False
                if msg.should_close:
                    self.keep_alive = False
            elif version.major == 1:
                pass  # 1.2+: answered as 1.1 (RFC 9110 2.5)
            else:
                self._send_error(505 if version.major >= 2 else 400, "")
                return
        elif msg.should_close:
            self.keep_alive = False
        headers = msg.headers
        if msg.chunked:
            if not self.http11:
                self._send_error(400, "Chunked bodies need HTTP/1.1.")
                return
            if headers.get("Transfer-Encoding", "").strip().lower() != "chunked":
                self._send_error(501, "Only Transfer-Encoding: chunked is supported.")
                return
        host_header = headers.get("Host", "")
        host = proxy.host_cache.get(host_header)
        if host is None:
            try:
                host = normalise_host(host_header)
            except BadTarget as e:
                self._bad(str(e))
                return
            proxy.remember_host(host_header, host)
        target = msg.path
        if target[:1] != "/":
            if msg.method == "CONNECT":  # we are not a forward proxy: no tunnels to anywhere
                self._send_error(405, "")
                return
            if target == "*" and msg.method == "OPTIONS":
                self._send_simple(200, b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n")
                return
            url = msg.url
            try:
                auth = normalise_host(url.raw_authority or "")
            except BadTarget as e:
                self._bad(str(e))
                return
            if host_header and auth != host:
                self._bad("the absolute request target names another host than Host")
                return
            if not host_header:
                host, host_header = auth, url.raw_authority
            target = url.raw_path_qs or "/"
        path, q, query = target.partition("?")
        if "%" in path or "/." in path:
            try:
                path = canonical_path(path)
            except BadTarget as e:
                self._bad(str(e))
                return
            target = path + q + query
        mount = proxy.router.route(host, path)
        if mount is None:
            self._send_error(404, "")
            return
        pool = mount.target
        ex = self.ex = Exchange(self, pool, msg, target, host_header)
        if pool.redirect_https and self.listener.scheme == "http" and proxy.https_port:
            self._redirect_https(ex, host, payload)
            return
        statics = proxy.statics
        if statics and payload is EMPTY_PAYLOAD and not msg.upgrade:
            st = statics.get(pool)
            if st is not None and st.serve(self, ex, path, headers):
                return
        if msg.upgrade:
            if not self._check_upgrade(ex, headers):
                return
        if payload is EMPTY_PAYLOAD:
            if msg.method not in ("GET", "HEAD") and "Content-Length" in headers:
                ex.body = b""
            ex.dispatch()
            return
        cl = headers.get("Content-Length")
        if cl is not None and int(cl) > proxy.max_body:
            self.error(ex, 413, "", close=True)
            return
        if payload.is_eof():
            ex.body = payload.read_nowait(-1)
            if cl is None and len(ex.body) > proxy.max_body:  # a chunked body that came whole
                self.error(ex, 413, "", close=True)
                return
            ex.dispatch()
            return
        if self.http11 and headers.get("Expect", "").lower() == "100-continue":  # never to 1.0 (RFC 9110 15.2)
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        ex.payload = payload
        ex.body_task = self.loop.create_task(self._buffer_then_dispatch(ex, cl is None))

    def _check_upgrade(self, ex: Exchange, headers) -> bool:
        up = headers.get("Upgrade", "").strip().lower()
        if up != "websocket":
            # h2c and friends are never tunnelled: the Upgrade header is dropped. llhttp discards
            # what follows such a head in the same read, so no further request on this connection.
            self.keep_alive = False
            return True
        if ex.method != "GET" or "Sec-WebSocket-Key" not in headers:
            self.error(ex, 400, "A WebSocket handshake needs GET and Sec-WebSocket-Key.", close=True)
            return False
        ex.ws = True
        return True

    async def _buffer_then_dispatch(self, ex: Exchange, chunked: bool) -> None:
        """Read the body before taking a worker, so a slow client never holds one: in memory up
        to REQUEST_MEMORY, past that spooled to a temporary file (request_buffering, the
        default). With request_buffering off, past _BUFFER_BODY a worker is taken and the rest
        streamed to it."""
        payload = ex.payload
        parts: list[bytes] = []
        size = 0
        limit = self.proxy.max_body
        spool = None
        buffering = ex.pool.app.request_buffering
        try:
            while True:
                async with asyncio.timeout(self.proxy.client_body_timeout):
                    chunk = await payload.readany()
                if not chunk:
                    if spool is not None:
                        ex.spool = spool
                        ex.body_len = size
                        spool = None
                    else:
                        ex.body = b"".join(parts)
                    ex.payload = None
                    break
                size += len(chunk)
                if size > limit:
                    self.error(ex, 413, "", close=True)
                    return
                if spool is not None:
                    spool.add((chunk,))
                    continue
                parts.append(chunk)
                if not buffering and size > _BUFFER_BODY:
                    ex.body = b"".join(parts)
                    ex.stream_body = True
                    ex.up_chunked = chunked
                    break
                if size > REQUEST_MEMORY:
                    spool = Spill(0)
                    spool.add(parts)
                    parts = []
        except TimeoutError:
            self.error(ex, 408, "", close=True)
            return
        except asyncio.CancelledError:
            return
        except OSError as e:  # the temporary file could not be written (disk full...)
            if not ex.finished:
                self.proxy.log_upstream_error(ex, 503, f"the request body could not be spooled: {e}")
                self.error(ex, 503, "The request body could not be stored.", close=True)
            return
        except Exception:  # noqa: BLE001 - the client sent a broken body or went away
            if not ex.finished:
                self.error(ex, 400, "The request body was cut short or malformed.", close=True)
            return
        finally:
            ex.body_task = None
            if spool is not None:
                spool.close()
        if not ex.finished:
            ex.dispatch()

    def _bad(self, why: str) -> None:
        self.proxy.log_bad_request(self.client.peer_ip, 400, why)
        self._send_error(400, "")

    # ------------------------------------------------------------------ WebSocket tunnels

    def start_tunnel(self, ex: Exchange, upstream, rest: bytes) -> None:
        Tunnel(self.proxy, self, ex, upstream, rest)

    # ------------------------------------------------------------------ timeouts (Proxy.sweep)

    def sweep(self, now: float) -> None:
        proxy = self.proxy
        ex = self.ex
        if self.tunnel is not None:
            self.tunnel.sweep(now)
            return
        if ex is not None:
            if self._paused and ex.resp_started and now - self.paused_at > proxy.send_timeout:
                # a client that stopped reading would hold the worker as long as it likes
                self._abandon(ex)
                self.closing = True
                if self.transport is not None:
                    self.transport.abort()
                return
            if ex.conn is not None and not ex.resp_started and now > ex.response_deadline:
                conn = ex.conn
                conn.ex = None
                if conn.transport is not None:
                    conn.transport.abort()
                why = f"no response within {ex.pool.response_timeout:g} s"
                # the worker may be hung (any concurrency): the pool takes it out and replaces it
                ex.release_worker(failed=True, reason=why)
                self.error(ex, 504, "", detail=why, close=not ex.req_done)
            return
        if self.pending or self.closing:
            return
        if self.partial_since:
            if now - self.partial_since > proxy.client_header_timeout:
                self._send_error(408, "")
        elif now - self.idle_since > proxy.keepalive_timeout:
            self.closing = True
            if self.transport is not None:
                self.transport.close()

