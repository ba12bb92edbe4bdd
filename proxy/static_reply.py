"""The response for one static file: preconditions (412), validators and 304, one byte range
(206/416), the precompressed variant, cache headers, and the body. The conditional headers are
evaluated in RFC 9110 13.2.2's order: If-Match, else If-Unmodified-Since (412); If-None-Match,
else If-Modified-Since (304); If-Range, then Range (206). Date is added by front.end_head.

Bodies up to SMALL go out with their head in one write. Larger ones go by os.sendfile straight
from the page cache to the client socket on plain TCP, and by pread + write with the protocol's
backpressure on TLS (`send_file`). Neither uvloop (no loop.sendfile) nor asyncio's
loop.sendfile (a coroutine per call, and it stops reading the connection) fits here, so the
socket is written directly while the transport has nothing buffered, which keeps bytes in
order, and writability is awaited on a dup of the socket (add_writer refuses a transport's own
descriptor).
"""
from __future__ import annotations

import asyncio
import errno
import mimetypes
import os
import re
import time
from email.utils import formatdate, parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .forward import Exchange
    from .reply import ReplyWriter

SMALL = 64 * 1024          # bodies up to this size are read and written with the head, in one write
CHUNK = 256 * 1024         # pread size on the copying path (TLS)
SLICE = 8 * 1024 * 1024    # most bytes one os.sendfile call is asked for
VARIANTS = ((".br", "br", b"br"), (".gz", "gzip", b"gzip"))  # in order of preference
_FINGERPRINT_HEX = re.compile(r"[-.](?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\.[0-9A-Za-z]+$")
_FINGERPRINT_B64 = re.compile(r"-(?=[\w-]{0,7}[0-9])(?=[\w-]{0,7}[A-Z])(?=[\w-]{0,7}[a-z])[\w-]{8}\.[0-9A-Za-z]+$")
_RANGE = re.compile(r"([0-9]*)\s*-\s*([0-9]*)")
_IMMUTABLE = b"Cache-Control: public, max-age=31536000, immutable\r\n"
_REVALIDATE = b"Cache-Control: public, max-age=0, must-revalidate\r\n"
_TYPES = {  # the web's own types, whatever /etc/mime.types says
    ".html": "text/html", ".htm": "text/html", ".css": "text/css", ".js": "text/javascript",
    ".mjs": "text/javascript", ".json": "application/json", ".map": "application/json",
    ".svg": "image/svg+xml", ".wasm": "application/wasm", ".woff2": "font/woff2", ".woff": "font/woff",
    ".txt": "text/plain", ".xml": "application/xml", ".webmanifest": "application/manifest+json",
    ".ico": "image/x-icon", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
    ".gif": "image/gif", ".webp": "image/webp", ".avif": "image/avif", ".pdf": "application/pdf",
}
# worth precompressing (so worth looking for .br/.gz): text, and these
_COMPRESSIBLE = frozenset({"application/json", "application/xml", "image/svg+xml", "application/wasm",
                           "application/manifest+json", "application/javascript", "image/x-icon"})


def fingerprinted(rel: str) -> bool:
    """A name that changes with its content (app-3f9a8b7c0d.css, index-BxT3k9aZ.js): cacheable
    for a year. Hex digests need a digit and a letter (not a date); 8-character base64url
    digests (Vite) need a digit and both cases."""
    return bool(_FINGERPRINT_HEX.search(rel) or _FINGERPRINT_B64.search(rel))


_types: dict[str, tuple[bytes, bool]] = {}


def content_type(name: str) -> tuple[bytes, bool]:
    """(Content-Type header line, compressible?) for a file name."""
    ext = os.path.splitext(name)[1].lower()
    got = _types.get(ext)
    if got is None:
        t = _TYPES.get(ext) or mimetypes.guess_type("x" + ext)[0] or "application/octet-stream"
        compressible = t.startswith("text/") or t in _COMPRESSIBLE
        if t.startswith("text/") or t in ("application/json", "application/xml", "image/svg+xml",
                                          "application/manifest+json"):
            t += "; charset=utf-8"
        got = (b"Content-Type: %s\r\n" % t.encode(), compressible)
        if len(_types) < 1024:
            _types[ext] = got
    return got


_ae_cache: dict[str, frozenset] = {}


def accepted(ae: str) -> frozenset:
    """The codings an Accept-Encoding value allows (q=0 excluded)."""
    got = _ae_cache.get(ae)
    if got is None:
        ok = set()
        for item in ae.split(","):
            coding, _, params = item.partition(";")
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    if float(q[2:]) <= 0:
                        continue
                except ValueError:
                    continue
            ok.add(coding.strip().lower())
        got = frozenset(ok)
        if len(_ae_cache) < 256:
            _ae_cache[ae] = got
    return got


_http_dates: dict[int, str] = {}


def http_date(t: int) -> str:
    s = _http_dates.get(t)
    if s is None:
        if len(_http_dates) > 4096:
            _http_dates.clear()
        s = _http_dates[t] = formatdate(t, usegmt=True)
    return s


def _date(value: str) -> float | None:
    """An HTTP-date as a timestamp, or None when it is not one (then the header is ignored)."""
    try:
        d = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return d.timestamp() if d.tzinfo is not None else None


def precondition_failed(headers, etag: bytes, mtime: int) -> bool:
    """If-Match (strong comparison; `*` matches: the file exists), else If-Unmodified-Since (an
    invalid date is ignored, RFC 9110 13.1.4; nginx answers it 412)."""
    im = headers.get("If-Match")
    if im is not None:
        if im.strip() == "*":
            return False
        tag = etag.decode()
        return all(t.strip() != tag for t in im.split(","))
    ius = headers.get("If-Unmodified-Since")
    if ius:
        t = _date(ius)
        return t is not None and mtime > t
    return False


def not_modified(headers, etag: bytes, last_modified: str, mtime: int) -> bool:
    inm = headers.get("If-None-Match")
    if inm is not None:  # it wins over If-Modified-Since (RFC 9110 13.2.2)
        if inm.strip() == "*":
            return True
        tag = etag.decode()
        return any(t.strip().removeprefix("W/") == tag for t in inm.split(","))
    ims = headers.get("If-Modified-Since")
    if ims:
        if ims == last_modified:
            return True
        t = _date(ims)
        return t is not None and mtime <= t
    return False


def byte_range(headers, size: int, etag: bytes, mtime: int):
    """None (send it all), (start, end) inclusive, or "unsatisfiable". One range only: a
    multi-range request gets the whole file, which RFC 9110 allows."""
    r = headers.get("Range")
    if r is None or size == 0:
        return None
    if_range = headers.get("If-Range")
    if if_range is not None:
        v = if_range.strip()
        if v.startswith(('"', "W/")):
            if v != etag.decode():  # strong comparison: a weak tag never matches
                return None
        elif _date(v) != mtime or time.time() < mtime + 1:
            # a date must be Last-Modified exactly, and a strong validator: not a file changed
            # within the last second (RFC 9110 13.1.5, 8.8.2.2)
            return None
    unit, _, spec = r.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    m = _RANGE.fullmatch(spec.strip())
    if m is None:
        return None
    first, last = m.groups()
    if not first:
        if not last or int(last) == 0:
            return "unsatisfiable" if last else None
        return max(size - int(last), 0), size - 1
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        return None  # invalid: ignored
    if start >= size:
        return "unsatisfiable"
    return start, size - 1 if end is None else min(end, size - 1)


def answer(front: "ReplyWriter", ex: "Exchange", headers, rel: str, fd: int, st, coding: bytes,
           vary: bool) -> bool:
    """Write the response for the file open on `fd`; True when a task goes on sending the body
    (and then owns `fd`)."""
    size = st.st_size
    mtime = int(st.st_mtime)
    etag = b'"%x-%x%s"' % (st.st_mtime_ns, size, b"-" + coding if coding else b"")
    last_modified = http_date(mtime)
    common = [
        b"ETag: %s\r\nLast-Modified: %s\r\n" % (etag, last_modified.encode()),
        _IMMUTABLE if fingerprinted(rel) else _REVALIDATE,
    ]
    if vary:
        common.append(b"Vary: Accept-Encoding\r\n")
    if precondition_failed(headers, etag, mtime):
        ex.status = 412
        front.write_head([b"HTTP/1.1 412 Precondition Failed\r\n", b"Content-Length: 0\r\n"])
        front.finish(ex)
        return False
    if not_modified(headers, etag, last_modified, mtime):
        ex.status = 304
        front.write_head([b"HTTP/1.1 304 Not Modified\r\n", *common])
        front.finish(ex)
        return False
    span = byte_range(headers, size, etag, mtime)
    if span == "unsatisfiable":
        ex.status = 416
        front.write_head([b"HTTP/1.1 416 Range Not Satisfiable\r\n",
                          b"Content-Range: bytes */%d\r\nContent-Length: 0\r\n" % size])
        front.finish(ex)
        return False
    parts = [b"", content_type(rel)[0], *common, b"Accept-Ranges: bytes\r\n"]
    if coding:
        parts.append(b"Content-Encoding: %s\r\n" % coding)
    if span is None:
        ex.status = 200
        parts[0] = b"HTTP/1.1 200 OK\r\n"
        offset, count = 0, size
    else:
        ex.status = 206
        parts[0] = b"HTTP/1.1 206 Partial Content\r\n"
        offset, count = span[0], span[1] - span[0] + 1
        parts.append(b"Content-Range: bytes %d-%d/%d\r\n" % (span[0], span[1], size))
    parts.append(b"Content-Length: %d\r\n" % count)
    if ex.method == "HEAD" or count == 0:
        front.write_head(parts)
        front.finish(ex)
        return False
    if count <= SMALL:
        body = os.pread(fd, count, offset)
        if len(body) != count:
            raise OSError(errno.EIO, "the file changed while being read")
        ex.resp_started = True
        ex.resp_bytes = count
        front.write_head(parts, body)
        front.finish(ex)
        return False
    ex.resp_started = True
    front.write_head(parts)
    ex.body_task = front.loop.create_task(send_file(front, ex, fd, offset, count))
    return True


async def send_file(front: "ReplyWriter", ex: "Exchange", fd: int, offset: int, count: int) -> None:
    """The body of a larger file, then finish; or abort, never passing a short body as whole."""
    t = front.transport
    loop = front.loop
    sock_fd = -1
    if front.listener.scheme == "http" and t is not None:
        sock = t.get_extra_info("socket")
        sock_fd = sock.fileno() if sock is not None else -1
    dup = -1
    waiter: list = [None]
    timeout = front.proxy.send_timeout  # without progress: a stuck download is cut
    try:
        while count:
            t = front.transport
            if t is None or t.is_closing():
                raise ConnectionError("the client connection closed")
            if sock_fd >= 0 and not t.get_write_buffer_size():
                try:
                    n = os.sendfile(sock_fd, fd, offset, min(count, SLICE))
                except BlockingIOError:
                    n = -1
                if n == 0:
                    raise OSError(errno.EIO, "the file changed while being sent")
                if n > 0:
                    offset += n
                    count -= n
                    ex.resp_bytes += n
                    continue
                if dup < 0:  # registered once: it only fires while we wait (the socket was full)
                    dup = os.dup(sock_fd)
                    loop.add_writer(dup, _wake, waiter)
                waiter[0] = loop.create_future()
                async with asyncio.timeout(timeout):
                    await waiter[0]
            else:
                chunk = os.pread(fd, min(count, CHUNK), offset)
                if not chunk:
                    raise OSError(errno.EIO, "the file changed while being sent")
                t.write(chunk)
                offset += len(chunk)
                count -= len(chunk)
                ex.resp_bytes += len(chunk)
                if front.write_paused:
                    async with asyncio.timeout(timeout):
                        await front._drain_helper()
    except asyncio.CancelledError:  # the client went away (FrontProtocol._abandon)
        raise
    except Exception:  # noqa: BLE001 - the client reset or stalled, or the file changed under us
        if not ex.finished:
            front.abort(ex)
        return
    finally:
        ex.body_task = None
        if dup >= 0:
            loop.remove_writer(dup)
            os.close(dup)
        os.close(fd)
    if not ex.finished:
        front.finish(ex)


def _wake(waiter: list) -> None:
    fut = waiter[0]
    if fut is not None and not fut.done():
        fut.set_result(None)
