"""A keep-alive connection to one worker (`Upstream`), and the proxy's pool of idle ones.

The worker's response is parsed by llhttp (httptools) and each piece is written to the client
from the parser's callbacks, everything one read produced in one write (`_flush`). Idle
connections wait in `IdlePool`, keyed by backend (proxy/checkout.py `Backend`); the proxy owns
them, and drops a backend's connections when the manager reports it gone (`Proxy.backend_gone`).
`Upstream` serves the exchange (forward.Exchange) `send` gives it; it does not import forward.py.
"""
from __future__ import annotations

import asyncio

import httptools

from .buffers import RESPONSE_FILE_MAX, RESPONSE_MEMORY, Spill
from .headers import MAX_RESPONSE_HEAD, RESPONSE_DROP

_NO_BODY_STATUS = frozenset({204, 304})
MAX_IDLE = 64  # idle keep-alive connections kept per worker
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def _status_line(status: int, reason: bytes) -> bytes:
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or b"Unknown")
        if len(_STATUS_LINES) < 512:
            _STATUS_LINES[key] = line
    return line



class Spare(list):
    """One backend's idle connections, most recently used last. `dead` once the backend is gone:
    a connection given back after that is closed instead of kept."""

    __slots__ = ("dead",)

    def __init__(self, dead: bool = False):
        super().__init__()
        self.dead = dead


class IdlePool:
    """Idle keep-alive connections per backend, for the next request to the same worker. Each
    Upstream holds its backend's `Spare` list, so giving a connection back is one append; `conns`
    is read directly on the hot path (forward.Exchange.on_worker)."""

    __slots__ = ("conns",)

    def __init__(self):
        self.conns: dict = {}   # backend -> Spare

    def spare(self, backend) -> Spare:
        """The list a new connection to `backend` goes back to (per new connection, not request)."""
        s = self.conns.get(backend)
        if s is None:
            if not backend.accepting:  # connected while it was being stopped: never kept
                return Spare(dead=True)
            s = self.conns[backend] = Spare()
        return s

    def drop(self, backend) -> None:
        """Close every idle connection to `backend` and keep none from now on (it is gone)."""
        s = self.conns.pop(backend, None)
        if s is not None:
            s.dead = True
            for c in s:
                if c.transport is not None:
                    c.transport.close()
            s.clear()


class Upstream(asyncio.Protocol):
    """A keep-alive connection to one worker's socket; idle ones wait in their backend's Spare."""

    __slots__ = (
        "worker", "transport", "parser", "ex", "reason", "hdrs", "cl", "bad", "interim",
        "rechunk", "until_close", "keep", "write_paused", "drain_waiter", "paused_for_front",
        "tunnel", "te_chunked", "out", "head_read", "timer", "spare",
    )

    def __init__(self, worker, spare: Spare):
        self.worker = worker
        self.spare = spare
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex = None  # the forward.Exchange it serves
        self.write_paused = False
        self.drain_waiter: asyncio.Future | None = None
        self.paused_for_front = False
        self.tunnel = None
        self.out: list[bytes] = []  # bytes for the client from this read, written once at its end
        self.timer: asyncio.TimerHandle | None = None  # response_timeout of an orphaned request
        self._reset()

    def _reset(self) -> None:
        self.reason = b""
        self.hdrs: list[bytes] = []
        self.cl: bytes | None = None
        self.bad: str | None = None
        self.interim = False
        self.rechunk = False
        self.until_close = False
        self.te_chunked = False
        self.keep = True
        self.head_read = 0  # bytes of the reads that ended before the response head did

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        w = self.drain_waiter
        if w is not None:
            self.drain_waiter = None
            if not w.done():
                w.set_result(None)
        if self.tunnel is not None:
            self.tunnel.resume_from_peer()

    async def drain(self) -> None:
        if self.write_paused and self.transport is not None:
            w = self.drain_waiter = asyncio.get_running_loop().create_future()
            await w

    def send(self, ex) -> None:
        """Write the request head (and a body we already hold) and wait for the response."""
        self.ex = ex
        ex.conn = self
        self._reset()
        front = ex.front
        head = ex.request_head()
        if ex.body:
            self.transport.write(head + (b"%x\r\n%s\r\n" % (len(ex.body), ex.body) if ex.up_chunked else ex.body))
        else:
            self.transport.write(head)
        if ex.stream_body or ex.spool is not None:
            # response_timeout starts once the whole body is with the worker (pump_*: _body_sent)
            ex.req_done = False
            ex.response_deadline = float("inf")
            ex.body_task = front.loop.create_task(ex.pump_body(self) if ex.stream_body else ex.pump_spool(self))
        else:
            ex.response_deadline = front.loop.time() + ex.pool.response_timeout

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_peer(data)
            return
        if self.ex is None:  # bytes nobody asked for: this connection cannot be trusted any more
            self.transport.abort()
            return
        ex = self.ex
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
        except httptools.HttpParserError as e:
            self._broken(f"invalid response: {e}")
        if self.out:
            self._flush()
        elif self.ex is ex and not ex.resp_started:
            # (not when this read ended the response and the next request was handed to this
            # connection from inside it: that read is not the new response's head)
            # the head goes on (and a header value without end never reaches on_header)
            self.head_read += len(data)
            if self.head_read > MAX_RESPONSE_HEAD:
                self._broken(f"response head over {MAX_RESPONSE_HEAD} bytes")

    def _flush(self) -> None:
        """One write to the client for everything this read produced: a small response's head
        and body go out together (one syscall, one wake-up of the client instead of two)."""
        out = self.out
        self.out = []
        ex = self.ex
        front = ex.front if ex is not None else None
        t = front.transport if front is not None else None
        if t is None:
            return
        rbuf = ex.rbuf
        if rbuf is not None and (rbuf.size or (front.write_paused and t.get_write_buffer_size() > RESPONSE_MEMORY)):
            self._hold(rbuf, out)
            return
        if len(out) == 1:
            t.write(out[0])
        else:
            t.writelines(out)
        if front.write_paused and not self.paused_for_front and self.transport is not None:
            # the client is slower than the worker: hold the rest (in the client transport's
            # buffer up to RESPONSE_MEMORY, then in a file), so the worker is given back as soon
            # as it has answered (response_buffering), or else slow the worker down
            if rbuf is None and self._may_buffer(ex):
                ex.rbuf = Spill(0)
            elif rbuf is None:
                self.paused_for_front = True
                self.transport.pause_reading()

    def _hold(self, rbuf: Spill, out: list) -> None:
        rbuf.add(out)
        if rbuf.size > RESPONSE_FILE_MAX and not self.paused_for_front and self.transport is not None:
            self.paused_for_front = True  # held enough: now the worker waits (resumed as it drains)
            self.transport.pause_reading()

    def _may_buffer(self, ex) -> bool:
        """Streams are never buffered: text/event-stream, `X-Accel-Buffering: no`, WebSockets."""
        if ex.ws or not ex.pool.app.response_buffering:
            return False
        for h in self.hdrs:
            name, _, value = h.partition(b":")
            name = name.lower()
            if name == b"content-type":
                if value.strip().lower().startswith(b"text/event-stream"):
                    return False
            elif name == b"x-accel-buffering" and value.strip().lower() == b"no":
                return False
        return True

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.transport = None
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_exception(ConnectionError("worker connection lost"))
        if self.tunnel is not None:
            self.tunnel.peer_lost(exc)
            return
        try:
            self.spare.remove(self)
        except ValueError:
            pass
        ex = self.ex
        if ex is None:
            return
        self.ex = None
        if ex.finished:  # an orphan (its client left): the worker closed, so it is done with it
            self._orphan_done(ex)
            return
        if ex.resp_started and self.until_close and not self.bad:
            self._complete(ex)  # a close-delimited body ends with the connection
            return
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)) and ex.resend(self.worker, exc):
            return
        self._fail(ex, "the worker closed the connection" + (f" ({exc})" if exc else ""))

    # ------------------------------------------------------------------ llhttp callbacks

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        ln = name.lower()
        if ln in RESPONSE_DROP:
            if ln == b"content-length":
                self.cl = value
            elif ln == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    self.bad = f"unsupported Transfer-Encoding {value[:40]!r}"
                self.te_chunked = True
            elif ln == b"connection":
                if b"close" in value.lower():
                    self.keep = False
            elif ln == b"upgrade" and self.ex is not None and self.ex.ws:
                self.hdrs.append(b"Upgrade: %s\r\n" % value)
            return
        self.hdrs.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is None:
            return
        status = self.parser.get_status_code()
        if status < 200:
            # 100 / 103 are skipped, never taken as the final response; 101 ends in _upgraded
            self.interim = True
            return
        if self.bad:
            self._broken(self.bad)
            return
        front = ex.front
        ex.status = status
        if status >= 500:  # the request id is on the app's error page: put it in the log too
            front.proxy.log_upstream_error(ex, status, f"answered by {self.worker.label}")
        ex.resp_started = True
        self.keep = self.keep and self.parser.should_keep_alive()
        parts = [_status_line(status, self.reason)]
        parts += self.hdrs
        if self.cl is not None:
            parts.append(b"Content-Length: %s\r\n" % self.cl)
        elif status not in _NO_BODY_STATUS and ex.method != "HEAD":
            if not self.te_chunked:  # close-delimited: ends when the worker closes
                self.until_close = True
                self.keep = False
            if front.http11:
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self.rechunk = True
            else:
                front.keep_alive = False
        head = front.end_head(parts)
        if len(head) > MAX_RESPONSE_HEAD:  # one that came in a single read (else data_received)
            ex.resp_started = False
            self._broken(f"response head over {MAX_RESPONSE_HEAD} bytes")
            return
        self.out.append(head)
        if ex.method == "HEAD":
            # llhttp would wait for the body a Content-Length announces: end here, do not reuse
            self.ex = None
            self.keep = False
            self.transport.close()
            self._complete(ex)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is None or self.interim:
            return
        ex.resp_bytes += len(body)
        if self.rechunk:
            self.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex is None or self.bad:
            return
        if self.interim:
            if self.parser.get_status_code() != 101:
                self._reset()
            return
        self.ex = None
        if self.keep and ex.req_done:
            # back to the idle list BEFORE the worker is released: the request the pool hands this
            # worker next must find this connection, not open another one
            self.give_back()
        elif self.transport is not None:
            # closed, or answered before the whole request body was sent: never reused
            self.transport.close()
        self._complete(ex)

    def give_back(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            spare = self.spare
            if len(spare) < MAX_IDLE and not spare.dead:
                spare.append(self)
            else:
                t.close()

    def _complete(self, ex) -> None:
        if ex.finished:  # an orphan: its response was read and dropped; now the worker is free
            self.out = []
            self._orphan_done(ex)
            return
        out = self.out
        if self.rechunk and ex.method != "HEAD":
            out.append(b"0\r\n\r\n")
        rbuf = ex.rbuf
        if out:
            self.out = []
            front = ex.front
            t = front.transport
            if t is not None:
                if rbuf is not None and (rbuf.size or (front.write_paused
                                                       and t.get_write_buffer_size() > RESPONSE_MEMORY)):
                    rbuf.add(out)
                elif len(out) == 1:
                    t.write(out[0])
                else:
                    t.writelines(out)
        if not ex.req_done:
            # the worker answered before reading the whole body: the connection cannot be reused
            self.keep = False
            ex.front.keep_alive = False
            if ex.body_task is not None:
                ex.body_task.cancel()
        if rbuf is not None:
            ex.conn = None  # this connection may serve another request while the client reads
            if self.paused_for_front:
                self.resume_for_front()
        ex.release_worker()
        if rbuf is not None and rbuf.size:
            ex.rdone = True  # the front finishes the exchange once the client has it all
            return
        ex.front.finish(ex)

    # ------------------------------------------------------------------ orphans (issue 11 item 2)

    def adopt_orphan(self, ex) -> None:
        """The client left while the worker still runs its request: the worker stays checked out
        until its response has ended (read here and dropped) or response_timeout has passed, so
        the pool never routes another request into a worker that is still busy."""
        self.out = []
        if self.paused_for_front:
            self.resume_for_front()
        loop = ex.front.loop
        self.timer = loop.call_at(max(ex.response_deadline, loop.time()), self._orphan_expired)
        ex.front.proxy.orphans.add(ex)  # still holds its worker: counted by the pool's invariants

    def _orphan_done(self, ex) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ex.front.proxy.orphans.discard(ex)
        ex.release_worker()

    def _orphan_expired(self) -> None:
        self.timer = None
        ex = self.ex
        if ex is None or not ex.finished:
            return
        self.ex = None
        ex.front.proxy.orphans.discard(ex)
        if self.transport is not None:
            self.transport.abort()
        w = ex.worker
        why = f"no response within {ex.pool.response_timeout:g} s (its client had left)"
        ex.release_worker(failed=w is not None and w.concurrency == 1, reason=why)

    def resume_for_front(self) -> None:
        if self.paused_for_front:
            self.paused_for_front = False
            if self.transport is not None:
                self.transport.resume_reading()

    # ------------------------------------------------------------------ failures

    def _broken(self, why: str) -> None:
        ex = self.ex
        self.ex = None
        if self.transport is not None:
            self.transport.abort()
        if ex is not None:
            if ex.finished:
                self._orphan_done(ex)
            else:
                self._fail(ex, self.bad or why)

    def _fail(self, ex, why: str) -> None:
        if ex.body_task is not None:
            ex.body_task.cancel()
        if ex.resp_started:
            ex.release_worker()
            ex.front.abort(ex)
            return
        ex.release_worker(failed=False, reason=why)
        ex.front.error(ex, 502, "The application failed while handling this request.", detail=why)

    def _upgraded(self, rest: bytes) -> None:
        ex = self.ex
        if ex is None:
            self.transport.abort()
            return
        if not ex.ws or self.parser.get_status_code() != 101:
            # a 101 the client did not ask for: never tunnelled, and this connection is not reused
            self.bad = "the worker switched protocols without being asked to"
            self._broken(self.bad)
            return
        self.ex = None
        front = ex.front
        ex.status = 101
        ex.resp_started = True
        parts = [_status_line(101, self.reason or b"Switching Protocols"), b"Connection: Upgrade\r\n"]
        parts += self.hdrs
        front.write_head(parts)
        front.start_tunnel(ex, self, rest)
