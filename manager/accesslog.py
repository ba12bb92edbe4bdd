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

from .extras import hook_observers, unhook_observers
from .output import log_path

log = logging.getLogger("passenger_lite.manager")
FLUSH_EVERY = 1.0
FLUSH_SIZE = 65536


def _http_version(msg) -> str:
    v = getattr(msg, "version", None)
    return f"{v.major}.{v.minor}" if v is not None else "1.1"


_clf_cache: list = [-1, ""]


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


def record(ex, status: int, aborted: bool, end: float) -> dict:
    """The fields of one access-log line, from a finished Exchange."""
    w = ex.last_worker
    t_worker = ex.t_worker or end
    return {
        "client": ex.front.peer_ip,
        "method": ex.method,
        "target": ex.target,
        "protocol": "HTTP/" + _http_version(ex.msg),
        "host": ex.host_header,
        "status": status,
        "bytes": ex.resp_bytes,
        "app": ex.app_name,
        "worker": w.id if w is not None else None,
        "pid": w.pid if w is not None else None,
        "total_ms": round((end - ex.t0) * 1000, 1),
        "queue_ms": round((t_worker - ex.t0) * 1000, 1),
        "upstream_ms": round((end - ex.t_worker) * 1000, 1) if ex.t_worker else None,
        "request_id": ex.request_id,
        "aborted": aborted,
    }


def format_text(r: dict, wall: float) -> str:
    up = "-" if r["upstream_ms"] is None else r["upstream_ms"]
    line = (f'{r["client"] or "-"} - - [{_clf_time(wall)}] "{r["method"]} {_q(r["target"])} {r["protocol"]}" '
            f'{r["status"]} {r["bytes"]} "{_q(r["host"])}" app={r["app"]} worker={r["worker"] or "-"} '
            f'pid={r["pid"] or "-"} total_ms={r["total_ms"]} queue_ms={r["queue_ms"]} upstream_ms={up} '
            f'rid={r["request_id"] or "-"}')
    return line + (" aborted\n" if r["aborted"] else "\n")


def format_json(r: dict, wall: float) -> str:
    return json.dumps({"time": round(wall, 3), **r}, separators=(",", ":")) + "\n"


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
        hook_observers(self.runtime.proxy, self)

    async def stop(self) -> None:
        unhook_observers(self.runtime.proxy, self)
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
        end = self._loop.time()
        r = record(ex, status, aborted, end)
        self._add(format_json(r, time.time()) if self.json else format_text(r, time.time()))

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
