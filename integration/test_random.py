"""Issue 11 item 13 (the randomized part): mixes of bad client behaviours, run at once against one
real passenger-lite (for the whole module) with two small WSGI apps, `one` (one worker of
concurrency 1) and `two` (two workers of concurrency 1). After every example: nothing in flight,
nothing queued, the right number of ready workers, and a prompt 200 from each app.

BEHAVIOURS is the list the strategy draws from (name -> what the client does); each one also runs
alone on each app (test_behaviour_alone), so a failure names the behaviour. A failed check
restarts the server before the next example, so one leak does not fail every example after it.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harness import Server, app_config
from rawhttp import RawConn, poll_until, request

LIMIT = 1 << 20            # client_max_body_size (1 MiB)
RESPONSE_TIMEOUT = 3       # response_timeout of both apps: /slow never answers in time
SLOW = 10                  # seconds /slow sleeps
WAIT = 30                  # how long a behaviour waits for its answer (others may hold the worker first)
PROMPT = 2.0               # "at once": a generous bound, well below what a wedge costs (RESPONSE_TIMEOUT)
BUDGET = 45                # seconds of examples in test_random_mixes before it stops drawing more
APPS = {"one": 1, "two": 2}  # app -> workers

APP = '''
import time

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":
        n = len(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(n).encode()]
    if path == "/slow":
        time.sleep(%d)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow"]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(64 << 20))])
        return (b"x" * 65536 for _ in range(1024))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
''' % SLOW


class Site:
    """One passenger-lite for the module; `fresh()` restarts it after a failed check."""

    def __init__(self, base: Path):
        self.base = base
        self.n = 0
        self.server: Server | None = None
        self.dirty = False
        root = base / "app"
        root.mkdir()
        (root / "passenger_wsgi.py").write_text(APP)
        self.config = {
            "client_max_body_size": LIMIT, "client_body_timeout": 1, "client_header_timeout": 1,
            "send_timeout": 1, "keepalive_timeout": 2,
            "apps": [app_config(name, root, hosts=[f"{name}.test"], min_processes=n, max_processes=n,
                                concurrency=1, response_timeout=RESPONSE_TIMEOUT, queue_timeout=20)
                     for name, n in APPS.items()],
        }
        self.start()

    def start(self) -> None:
        self.n += 1
        self.server = Server(self.base / f"s{self.n}", self.config)
        self.server.start()
        self.dirty = False

    def fresh(self) -> Server:
        if self.dirty:
            self.server.stop()
            self.start()
        return self.server


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("random"))
    yield s
    s.server.stop()


# ---------------------------------------------------------------- the behaviours

def head(method, path, host, extra=b""):
    return f"{method} {path} HTTP/1.1\r\nHost: {host}.test\r\n".encode() + extra + b"\r\n"


def expect(port, data, status, timeout=WAIT):
    with RawConn(port, timeout) as c:
        c.send(data)
        assert c.final()[1].status == status


def oversized_body_chunked(port, host):
    """A chunked body past client_max_body_size: 413 mid-body (issue 11 item 1)."""
    with RawConn(port, WAIT) as c:
        c.send(head("POST", "/echo", host, b"Transfer-Encoding: chunked\r\n"))
        chunk = b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n"
        try:
            for _ in range(2 * LIMIT // 65536):
                c.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert c.final()[1].status == 413


def oversized_content_length(port, host):
    expect(port, head("POST", "/echo", host, b"Content-Length: %d\r\n" % (LIMIT * 4)), 413)


def stalled_body(port, host):
    """Half a body, then nothing: 408 at client_body_timeout (issue 11 item 1)."""
    with RawConn(port, WAIT) as c:
        c.send(head("POST", "/echo", host, b"Content-Length: 524288\r\n") + b"b" * 131072)
        assert c.final()[1].status == 408


def abort_before_head(port, host):
    socket.create_connection(("127.0.0.1", port)).close()


def abort_mid_head(port, host):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head("GET", "/", host)[:20])


def abort_mid_body(port, host):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head("POST", "/echo", host, b"Content-Length: 10000\r\n") + b"c" * 3000)
        time.sleep(0.2)


def abort_after_head(port, host):
    """The whole request, then the client leaves before the answer (the app still runs it)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head("GET", "/slow", host))
        time.sleep(0.3)


def abort_mid_response(port, host):
    with RawConn(port, WAIT) as c:
        c.send(head("GET", "/big", host))
        c._fill()


def slow_reader(port, host):
    """Reads a little of a 64 MiB answer, then nothing: cut off at send_timeout."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(WAIT)
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(head("GET", "/big", host))
        s.recv(1024)
        time.sleep(2)
    finally:
        s.close()


def malformed_chunk(port, host):
    expect(port, head("POST", "/echo", host, b"Transfer-Encoding: chunked\r\n") + b"zz\r\nhello\r\n0\r\n\r\n", 400)


def keepalive_reuse(port, host):
    with RawConn(port, WAIT) as c:
        for i in range(3):
            c.send(head("GET", "/", host) if i < 2 else head("POST", "/echo", host, b"Content-Length: 5\r\n") + b"12345")
            r = c.final()[1]
            assert r.status == 200, r


def pipelining(port, host):
    with RawConn(port, WAIT) as c:
        c.send(head("GET", "/", host) + head("POST", "/echo", host, b"Content-Length: 3\r\n") + b"abc"
               + head("GET", "/", host, b"Connection: close\r\n"))
        assert [c.final()[1].body for _ in range(3)] == [b"ok", b"3", b"ok"]


def slow_endpoint_timeout(port, host):
    """A response that never comes in time: 504 at response_timeout, the worker replaced."""
    expect(port, head("GET", "/slow", host), 504)


def client_gives_up(port, host):
    """`curl -m 0.5` on the slow endpoint (issue 11 item 2: the worker is still busy after it)."""
    with RawConn(port, 0.5) as c:
        c.send(head("GET", "/slow", host))
        with pytest.raises((TimeoutError, socket.timeout)):
            c.final()


BEHAVIOURS = {f.__name__: f for f in [
    oversized_body_chunked, oversized_content_length, stalled_body, abort_before_head, abort_mid_head,
    abort_mid_body, abort_after_head, abort_mid_response, slow_reader, malformed_chunk, keepalive_reuse,
    pipelining, slow_endpoint_timeout, client_gives_up,
]}


# ---------------------------------------------------------------- the checks

def settled(s: Server) -> dict | None:
    st_ = s.status()
    apps = {a["name"]: a for a in st_["apps"]}
    for name, n in APPS.items():
        a = apps[name]
        ready = [w for w in a["workers"] if w["state"] == "ready"]
        if a["queue"] or any(w["in_flight"] for w in a["workers"]) or len(ready) != n:
            return None
    return st_


def check_after(site: Site, what: str) -> None:
    s = site.server
    try:
        # A limit, timeout or abort may take up to RESPONSE_TIMEOUT to end (a worker replaced, in
        # flight); after that nothing may be left in flight or queued.
        try:
            poll_until(lambda: settled(s), timeout=RESPONSE_TIMEOUT + 10, what="nothing in flight or queued")
        except AssertionError:
            raise AssertionError(f"after {what}: still in flight or queued:\n"
                                 f"{json.dumps(s.status()['apps'], indent=1)[:3000]}") from None
        for name in APPS:
            t0 = time.monotonic()
            try:
                with RawConn(s.port, PROMPT) as c:
                    c.send(head("GET", "/", name, b"Connection: close\r\n"))
                    r = c.final()[1]
            except (TimeoutError, socket.timeout):
                raise AssertionError(f"after {what}: {name} did not answer within {PROMPT} s though "
                                     f"status said it was idle") from None
            assert r.status == 200 and r.body == b"ok", (what, name, r)
            assert time.monotonic() - t0 < PROMPT
    except BaseException:
        site.dirty = True
        raise


def run_mix(site: Site, mix: list[tuple[str, str]]) -> None:
    s = site.fresh()
    errors = []

    def one(name, host):
        try:
            BEHAVIOURS[name](s.port, host)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(f"{name} on {host}: {e!r}")

    threads = [threading.Thread(target=one, args=m, daemon=True) for m in mix]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        site.dirty = True
    assert not errors, errors
    check_after(site, " + ".join(f"{n}@{h}" for n, h in mix))


@pytest.mark.parametrize("host", list(APPS))
@pytest.mark.parametrize("behaviour", list(BEHAVIOURS))
def test_behaviour_alone(site, behaviour, host):
    run_mix(site, [(behaviour, host)])


_started: list[float] = []
_failed: list[bool] = []


# No shrinking (each example costs seconds; test_behaviour_alone names the behaviour), the same
# examples on every run (derandomize), and a time bound: past BUDGET no new example runs, unless one
# has failed (then hypothesis replays it once, which must fail again).
@settings(max_examples=25, deadline=None, database=None, derandomize=True, report_multiple_bugs=False,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(list(BEHAVIOURS)), st.sampled_from(list(APPS))), min_size=2, max_size=5))
def test_random_mixes(site, mix):
    if not _started:
        _started.append(time.monotonic())
    if time.monotonic() - _started[0] > BUDGET and not _failed:
        return
    try:
        run_mix(site, mix)
    except BaseException:
        _failed.append(True)
        raise
