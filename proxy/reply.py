"""Writing responses to the client: heads, the end of an exchange, error pages, redirects.

`ReplyWriter` is the part of the client protocol (front.FrontProtocol, whose base class it is)
that forward.py, upstream.py, static_reply.py and tunnel.py write through: they type against it
and never import front.py. A base class rather than a separate object, so that writing a response
costs no extra hop on the hot path. It uses the protocol's `transport`, `proxy`, `ex`,
`keep_alive`, `http11`, `closing`, `_upgraded` and `_next()`.
"""
from __future__ import annotations

import asyncio

from aiohttp.streams import EMPTY_PAYLOAD

from .headers import date_line

_CLOSE = b"Connection: close\r\n\r\n"
_KEEP = b"\r\n"
_KEEP10 = b"Connection: keep-alive\r\n\r\n"


class ReplyWriter:
    """Response writing for one client connection (mixed into front.FrontProtocol)."""

    def end_head(self, parts: list) -> bytes:
        """The response head from its status line and header lines, with our Date and Connection."""
        parts.append(date_line())
        if not self.keep_alive or self.proxy.stopping:
            self.keep_alive = False
            parts.append(_CLOSE)
        elif not self.http11:
            parts.append(_KEEP10)
        else:
            parts.append(_KEEP)
        return b"".join(parts)

    def write_head(self, parts: list, body: bytes = b"") -> None:
        t = self.transport
        if t is None:
            return
        head = self.end_head(parts)
        t.write(head + body if body else head)  # a small body goes out with its head, in one write

    def finish(self, ex) -> None:
        """The response to `ex` has been written completely."""
        ex.finished = True
        if ex.rbuf is not None or ex.spool is not None:
            drop_buffers(ex)
        self.proxy.observe(ex, ex.status)
        if self.ex is ex:
            self.ex = None
        if not self.keep_alive or self._upgraded:
            self.closing = True
            if self.transport is not None:
                self.transport.close()
            return
        self._next()

    def abort(self, ex) -> None:
        """The response began but cannot be completed: cut the connection, never fake an end."""
        ex.finished = True
        if ex.rbuf is not None or ex.spool is not None:
            drop_buffers(ex)
        self.proxy.observe(ex, ex.status or 502, aborted=True)
        if self.ex is ex:
            self.ex = None
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def error(self, ex, status: int, message: str, *, problem=None, detail: str = "",
              close: bool = False) -> None:
        """Answer `ex` with an error page (its response has not begun)."""
        if ex.finished:
            return
        if ex.body_task is not None and ex.body_task is not asyncio.current_task():
            ex.body_task.cancel()
        if close or not ex.req_done or (ex.payload is not None and not ex.payload.is_eof()):
            self.keep_alive = False  # unread body bytes would be taken for the next request
        ex.status = status
        if not ex.request_id:
            ex.request_id = self.proxy.next_request_id()
        if detail or status >= 500:  # every 5xx page's request id is in the log (one line)
            self.proxy.log_upstream_error(ex, status, detail or message or self.proxy.pages.reason(status))
        body = self.proxy.pages.render(status, ex.request_id, message=message or None, problem=problem,
                                       custom=ex.pool.error_page)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, self.proxy.pages.reason(status).encode()),
                b"Content-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\nX-Request-Id: %s\r\n"
                % (len(body), ex.request_id.encode()),
                b"Cache-Control: no-store\r\n"]
        if status == 503:
            head.append(b"Retry-After: 5\r\n")
        self.write_head(head, body if ex.method != "HEAD" else b"")
        self.finish(ex)

    def _send_error(self, status: int, message: str) -> None:
        """An error before an exchange exists (parse errors, bad Host...): answer and close."""
        self.keep_alive = False
        self.closing = True
        t = self.transport
        if t is None:
            return
        rid = self.proxy.next_request_id()
        body = self.proxy.pages.render(status, rid, message=message or None)
        t.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n"
                b"X-Request-Id: %s\r\n%sConnection: close\r\n\r\n%s"
                % (status, self.proxy.pages.reason(status).encode(), len(body), rid.encode(), date_line(), body))
        self.proxy.observe_early(status)
        t.close()

    def _send_simple(self, status: int, extra: bytes) -> None:
        self.write_head([b"HTTP/1.1 %d OK\r\n" % status, extra, b"Content-Length: 0\r\n"])
        if not self.keep_alive and self.transport is not None:
            self.closing = True
            self.transport.close()

    def _redirect_https(self, ex, host: str, payload) -> None:
        if not host:
            self.error(ex, 400, "This app is served over HTTPS only; the request names no host.", close=True)
            return
        if payload is not EMPTY_PAYLOAD:
            self.keep_alive = False  # the body is never read: nothing more on this connection
        port = self.proxy.https_port
        loc = "https://" + host + ("" if port == 443 else f":{port}") + ex.target
        # 308 keeps the method and body of a POST; 301 is what every client knows for GET
        ex.status = 301 if ex.method in ("GET", "HEAD") else 308
        self.write_head([b"HTTP/1.1 301 Moved Permanently\r\n" if ex.status == 301 else
                         b"HTTP/1.1 308 Permanent Redirect\r\n",
                         b"Location: %s\r\nContent-Length: 0\r\n" % loc.encode("utf-8", "surrogateescape")])
        self.finish(ex)

    def finish_tunnel(self, ex) -> None:
        ex.finished = True
        self.proxy.observe(ex, 101)
        if self.ex is ex:
            self.ex = None
        self.closing = True
        if self.transport is not None:
            self.transport.close()


def drop_buffers(ex) -> None:
    """The exchange is over: its temporary files (if any) go."""
    if ex.rbuf is not None:
        ex.rbuf.close()
        ex.rbuf = None
    if ex.spool is not None:
        ex.spool.close()
        ex.spool = None
