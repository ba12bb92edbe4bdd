"""The access log: one line per request, off by default (`access_log: PATH` or `-` for stdout).

Text lines start like NGINX's combined format, so the usual tools read them, and go on with
what an app server adds:

    127.0.0.1 - - [01/May/2025:12:00:01 +0000] "GET /posts?page=2 HTTP/1.1" 200 5120 "blog.test" \
        app=blog worker=2 pid=4242 total_ms=12.4 queue_ms=0.1 upstream_ms=12.1 rid=9f3c2a1b-2a

(one line; broken here to fit).

`log_format: json` writes one JSON object per line with the same fields (see the README).
Times come from the proxy's own clock readings (t0 = request parsed, t_worker = worker assigned,
end = response written): queue = t_worker - t0, upstream = end - t_worker, total = end - t0.

Cost: the proxy calls `observe` once per finished exchange; it formats one line into a memory
buffer (no logging module, no syscall); the buffer is written out when it passes 64 KiB and at
least every FLUSH_EVERY seconds. When the key is not set the observer is not installed at all.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from .output import log_path

log = logging.getLogger("passenger_lite.manager")
FLUSH_EVERY = 1.0
FLUSH_SIZE = 65536


_clf_cache: list = [-1, ""]
_js = json.encoder.encode_basestring  # a JSON string literal (the C encoder)


def _clf_time(now: float) -> str:
    sec = int(now)
    if sec != _clf_cache[0]:
        _clf_cache[0] = sec
        _clf_cache[1] = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(sec))
    return _clf_cache[1]


def _q(text: str) -> str:
    """A value inside double quotes: escape what would break the line."""
    if '"' in text or "\\" in text or not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return text


def _times(ex, end: float) -> tuple[float, float, float | None]:
    """(total, queue wait, upstream) in ms; upstream is None when no worker was reached."""
    t0, tw = ex.t0, ex.t_worker
    return (end - t0) * 1000, ((tw or end) - t0) * 1000, ((end - tw) * 1000 if tw else None)


_TEXT = ('%s - - [%s] "%s %s HTTP/%d.%d" %d %d "%s" app=%s worker=%s pid=%s total_ms=%.1f queue_ms=%.1f '
         'upstream_ms=%s rid=%s%s\n')
_JSON = ('{"time":%.3f,"client":%s,"method":%s,"target":%s,"protocol":"HTTP/%d.%d","host":%s,"status":%d,'
         '"bytes":%d,"app":%s,"worker":%s,"pid":%s,"total_ms":%.1f,"queue_ms":%.1f,"upstream_ms":%s,'
         '"request_id":%s,"aborted":%s}\n')


def format_text(ex, status: int, aborted: bool, end: float, wall: float) -> str:
    """One text line for a finished Exchange (formatted straight from it: this runs per request)."""
    w = ex.last_worker
    total, queue, up = _times(ex, end)
    v = ex.http_version
    return _TEXT % (ex.client.peer_ip or "-", _clf_time(wall), ex.method, _q(ex.target), v[0], v[1], status,
                    ex.resp_bytes, _q(ex.host_header), ex.app_name, w.id if w is not None else "-",
                    w.pid if w is not None else "-", total, queue, "-" if up is None else "%.1f" % up,
                    ex.request_id or "-", " aborted" if aborted else "")


def format_json(ex, status: int, aborted: bool, end: float, wall: float) -> str:
    w = ex.last_worker
    total, queue, up = _times(ex, end)
    v = ex.http_version
    return _JSON % (wall, _js(ex.client.peer_ip), _js(ex.method), _js(ex.target), v[0], v[1],
                    _js(ex.host_header), status, ex.resp_bytes, _js(ex.app_name),
                    w.id if w is not None else "null", w.pid if w is not None else "null", total, queue,
                    "null" if up is None else "%.1f" % up, _js(ex.request_id), "true" if aborted else "false")


def format_early(status: int, wall: float, json_format: bool) -> str:
    """A request answered before it reached an app (malformed, no route): only its status is known."""
    if json_format:
        return json.dumps({"time": round(wall, 3), "status": status, "app": None}, separators=(",", ":")) + "\n"
    return f'- - - [{_clf_time(wall)}] "-" {status} 0 "-" app=- worker=- pid=- rid=-\n'


class AccessLog:
    """An extra (start/stop) that hooks the proxy's observers and writes the access log."""

    def __init__(self, runtime, target: str | Path):
        self.runtime = runtime
        self.target = target            # a Path, or "-" for stdout
        self.json = runtime.site.config.log_format == "json"
        self._buf: list[str] = []
        self._size = 0
        self._fd: int | None = None
        self._timer = None
        self._loop = None

    @classmethod
    def from_site(cls, runtime) -> "AccessLog | None":
        value = runtime.site.config.access_log
        if not value:
            return None
        return cls(runtime, "-" if value == "-" else log_path(runtime.site, "access_log"))

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._open()
        self.runtime.proxy.add_observer(self.observe, self.observe_early)

    async def stop(self) -> None:
        self.runtime.proxy.remove_observer(self.observe, self.observe_early)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._fd is not None and self.target != "-":
            os.close(self._fd)
        self._fd = None

    def _open(self) -> None:
        if self.target == "-":
            self._fd = sys.stdout.fileno()
            return
        try:
            self._fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise OSError(e.errno, f"cannot open access_log {self.target}: {e.strerror or e}") from None

    def reopen(self) -> None:
        """After logrotate moved the file (SIGUSR1)."""
        self.flush()
        if self.target == "-" or self._fd is None:
            return
        old = self._fd
        self._open()
        os.close(old)

    # ------------------------------------------------------------------ per request (the proxy calls these)

    def observe(self, ex, status: int, aborted: bool = False) -> None:
        self._add((format_json if self.json else format_text)(ex, status, aborted, time.monotonic(), time.time()))

    def observe_early(self, status: int) -> None:
        self._add(format_early(status, time.time(), self.json))

    def _add(self, line: str) -> None:
        self._buf.append(line)
        self._size += len(line)
        if self._size >= FLUSH_SIZE:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_EVERY, self._flush_timer)

    # ------------------------------------------------------------------ writing out

    def _flush_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if not self._buf or self._fd is None:
            return
        data = "".join(self._buf).encode("utf-8", "replace")
        self._buf.clear()
        self._size = 0
        try:
            while data:  # a regular file or a pipe: short writes are rare, but possible on a pipe
                n = os.write(self._fd, data)
                data = data[n:]
        except BlockingIOError:
            log.warning("access log: the reader of stdout is not keeping up; %d bytes dropped", len(data))
        except OSError as e:
            log.warning("access log: cannot write to %s: %s", self.target, e.strerror or e)
