"""A raw-bytes HTTP/1.1 client for the edge tests: it sends exactly the bytes a test gives it
(a plain HTTP client library cannot send most broken requests) and reads answers strictly,
one at a time, so a test sees interim responses, framing and whether the server closed.

    with RawConn(port) as c:
        c.send(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        r = c.response()            # Response(status, headers, body, raw)
        assert c.closed_by_server() # or: the connection stays open for the next request
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    headers: dict[str, str]            # lower-case names; repeated names joined with ", "
    body: bytes
    raw_head: bytes
    names: list[str] = field(default_factory=list)   # every header name, in order, lower-case

    def count(self, name: str) -> int:
        return self.names.count(name.lower())


class RawConn:
    def __init__(self, port: int, timeout: float = 10, host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.eof = False

    def __enter__(self) -> "RawConn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"closed after {len(self.buf)} of {n} body bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed in the middle of a line: {self.buf[:200]!r}")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def response(self, method: str = "GET") -> Response:
        """The next response (an interim 1xx is returned as it is; call again for the next)."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a complete response head: {self.buf[:300]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        assert parts[0] in (b"HTTP/1.1", b"HTTP/1.0"), lines[0]
        status = int(parts[1])
        headers: dict[str, str] = {}
        names = []
        for ln in lines[1:]:
            k, _, v = ln.decode("latin-1").partition(":")
            k = k.strip().lower()
            names.append(k)
            headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
        if status < 200 or status in (204, 304) or method == "HEAD":
            body = b""
        elif "transfer-encoding" in headers:
            assert headers["transfer-encoding"] == "chunked", headers
            chunks = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers
                        pass
                    break
                chunks.append(self._take(size))
                assert self._take(2) == b"\r\n"
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return Response(status, headers, body, head, names)

    def final(self, method: str = "GET") -> tuple[list[Response], Response]:
        """Interim responses (1xx) passed on before the final one, and the final one."""
        interim = []
        while True:
            r = self.response(method)
            if r.status >= 200 or r.status == 101:
                return interim, r
            interim.append(r)

    def closed_by_server(self, wait: float = 10) -> bool:
        """True when the server closes the connection (with no more bytes) within `wait` s."""
        self.sock.settimeout(wait)
        try:
            return not self._fill() and not self.buf
        except (TimeoutError, socket.timeout):
            return False

    def still_open(self, wait: float = 0.3) -> bool:
        """True when nothing arrives and the server does not close within `wait` s."""
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            self._fill()  # bytes or a close: not quietly open
            return False
        except (TimeoutError, socket.timeout):
            return True
        finally:
            self.sock.settimeout(old)


def exchange(port: int, data: bytes, method: str = "GET", timeout: float = 10) -> Response:
    """Send `data` on a fresh connection and return the first final response."""
    with RawConn(port, timeout) as c:
        c.send(data)
        return c.final(method)[1]


def request(method: str, target: str, host: str | None = "app.test", headers: list[tuple[str, str]] = (),
            body: bytes = b"", version: str = "HTTP/1.1", close: bool = True) -> bytes:
    """Request bytes, exactly as given (no header is added but Host, Connection: close and,
    for a body, Content-Length)."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def poll_until(cond, timeout: float = 20, every: float = 0.05, what: str = "condition"):
    """Call cond() until it returns a true value; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(every)
