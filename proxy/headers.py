"""Host and path normalisation, the header names the proxy never forwards as they came, and the
Date line of every response.

Pure functions, no I/O (but the clock, for `date_line`); the hot path calls `canonical_path` and
`normalise_host` only when the cheap checks in front.py see something unusual (a '%', a dot
segment, an unseen Host value).
"""
from __future__ import annotations

import re
from email.utils import formatdate
from time import time as _time

# Hop-by-hop headers (RFC 9110 7.6.1) plus the ones we set ourselves: never forwarded as sent.
# Proxy-Authorization and Proxy-Authenticate are not here: this server never asks for proxy
# credentials (no 407 of its own), so they are not addressed to it; like nginx, it passes them
# on (an app may do proxy authentication itself). Named in Connection, they are dropped.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade",
})
# Set by the proxy from what it saw itself; client values are dropped unless the peer is trusted.
FORWARDING = frozenset({
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
    b"x-real-ip", b"forwarded",
})
# Request headers the proxy handles itself.
REQUEST_DROP = HOP_BY_HOP | FORWARDING | frozenset({b"expect", b"content-length", b"host"})
# Response headers the proxy re-frames, must not pass on, or sets itself (Date, as nginx does:
# one Date on every response, whatever the app sent or forgot; RFC 9110 6.6.1).
RESPONSE_DROP = HOP_BY_HOP | frozenset({b"content-length", b"date"})
# Most bytes of a worker's response head (status line and header fields as passed on, or the
# reads that have not ended it yet): beyond, 502. nginx's proxy_buffer_size allows 4 or 8 KiB,
# Envoy 60 KiB: this is generous for big Set-Cookie or Content-Security-Policy headers, below
# what browsers accept (Chrome: 256 KiB), and a bound on what the front buffers for a worker
# that sends header fields without end.
MAX_RESPONSE_HEAD = 64 * 1024

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")


class BadTarget(ValueError):
    """The request target cannot be routed safely (400)."""


def canonical_path(path: str) -> str:
    """The one form we route on: unreserved percent-escapes decoded (so %2e%2e is '..'),
    other escapes kept with upper-case hex (%2F stays an encoded slash), dot segments removed.

    Raises BadTarget for a broken escape (`/foo%`, `%zz`) or a path not starting with '/'.
    """
    if not path.startswith("/"):
        raise BadTarget("the path must start with /")
    if "%" in path:
        out = []
        i, n = 0, len(path)
        while i < n:
            c = path[i]
            if c == "%":
                h = path[i + 1:i + 3]
                if len(h) != 2 or h[0] not in _HEX or h[1] not in _HEX:
                    raise BadTarget(f"broken percent-escape at {path[i:i + 3]!r}")
                b = int(h, 16)
                out.append(chr(b) if b in _UNRESERVED else "%" + h.upper())
                i += 3
            else:
                out.append(c)
                i += 1
        path = "".join(out)
    if "/." in path:
        path = remove_dot_segments(path)
    return path


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, for an absolute path; never climbs above '/'."""
    segs = path.split("/")
    out: list[str] = []
    for s in segs[1:]:
        if s == ".":
            continue
        if s == "..":
            if out:
                out.pop()
            continue
        out.append(s)
    trailing = segs[-1] in (".", "..")
    return "/" + "/".join(out) + ("/" if trailing and out else "")


_HOST_RE = re.compile(r"^(?:\[[0-9a-f:.]+\]|[a-z0-9_.-]*)(?::[0-9]{0,5})?$")


def normalise_host(value: str) -> str:
    """Host header -> lower-case name without port or trailing dot ('' if empty).

    Raises BadTarget for anything that is not a host[:port]: userinfo (`evil@app.test`), a path
    (`app.test/x`), spaces, or other characters no host name has.
    """
    v = value.strip().lower()
    if not _HOST_RE.match(v):
        raise BadTarget(f"invalid Host header {value[:100]!r}")
    if v.startswith("["):
        host = v[: v.index("]") + 1]
    else:
        host = v.partition(":")[0]
    return host.rstrip(".")


def connection_tokens(values: list[bytes]) -> set[bytes]:
    """Header names listed in Connection: headers (lower-case), to be dropped as hop-by-hop."""
    out = set()
    for v in values:
        for tok in v.split(b","):
            tok = tok.strip().lower()
            if tok:
                out.add(tok)
    return out


_date = [0.0, b""]  # (when the cached line expires, "Date: ...\r\n")


def date_line() -> bytes:
    """The `Date:` header line for now, formatted once a second (per response: one clock read)."""
    now = _time()
    if now < _date[0]:
        return _date[1]
    t = int(now)
    _date[0] = t + 1.0
    _date[1] = b"Date: %s\r\n" % formatdate(t, usegmt=True).encode()
    return _date[1]
