"""Issue 11 items 2 and 3: a worker is held exactly as long as it works on a request - not by a
slow client (bodies and responses are buffered) and not freed early by a client that gave up.

Apps have one worker of concurrency 1, so a worker held by a client shows as a request that
cannot be served. Temporary buffer files are looked for among the front process's descriptors:
they must be 0600, already unlinked, and gone once the exchange is over.
"""
import hashlib
import json
import os
import socket
import stat
import tempfile
import time

import psutil
import pytest

from checks import assert_served_after
from harness import Server, app_config, copy_app
from rawhttp import RawConn, poll_until, request

BIG = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("buffering")
    apps = d / "apps"
    apps.mkdir()
    root = copy_app("stream_app", apps)
    one = {"min_processes": 1, "max_processes": 1, "queue_timeout": 30, "type": "python-wsgi"}
    s = Server(d / "s", {"client_max_body_size": "4m", "apps": [
        app_config("buf", root, hosts=["buf.test"], **one),
        app_config("nobuf", root, hosts=["nobuf.test"], request_buffering=False, response_buffering=False, **one)]})
    s.start()
    yield s
    s.stop()


def in_flight(s, app: str) -> int:
    return sum(w["in_flight"] for w in s.app_status(app)["workers"])


def temp_files(s) -> list[tuple[str, int]]:
    """(path, mode) of the open, unlinked temporary files of passenger-lite's own processes."""
    tmp = tempfile.gettempdir()
    out = []
    procs = [psutil.Process(s.proc.pid)]
    procs += [p for p in procs[0].children() if "passenger" in " ".join(p.cmdline())]
    for p in procs:
        fd_dir = f"/proc/{p.pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith(tmp) and target.endswith("(deleted)"):
                    out.append((target, stat.S_IMODE(os.stat(f"{fd_dir}/{fd}").st_mode)))
            except OSError:
                pass
    return out


def read_response(c: RawConn, first: bytes) -> tuple[bytes, int]:
    """Read a Content-Length response whose first bytes are `first`: (head, body length)."""
    buf = first
    while b"\r\n\r\n" not in buf:
        buf += c.sock.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    got = len(body)
    while got < length:
        chunk = c.sock.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    return head, got


def test_a_slow_download_does_not_hold_the_worker(srv):
    with RawConn(srv.port, timeout=30) as c:
        c.send(request("GET", f"/big?n={BIG}", host="buf.test", close=False))
        first = c.sock.recv(100)
        assert first.startswith(b"HTTP/1.1 200")
        # the client reads nothing more: the worker has answered and is free all the same
        poll_until(lambda: in_flight(srv, "buf") == 0, timeout=10, what="the worker to be free")
        assert_served_after(srv, "buf", host="buf.test", workers=1)
        files = temp_files(srv)
        assert files and all(mode == 0o600 for _, mode in files), files
        _, got = read_response(c, first)
        assert got == BIG  # all of it, held for the client
    poll_until(lambda: not temp_files(srv), what="the buffer file to be gone")


def test_a_slow_upload_does_not_hold_the_worker(srv):
    body = os.urandom(1024 * 1024)
    with RawConn(srv.port, timeout=30) as c:
        c.send(request("POST", "/echo", host="buf.test", close=False, headers=[("Content-Length", str(len(body)))])
               + body[:400 * 1024])
        files = poll_until(lambda: temp_files(srv), what="the body spooled (past 256 KiB)")
        assert all(mode == 0o600 for _, mode in files), files
        # the proxy holds 400 KiB of it, yet the worker has not been taken: another request is served at once
        assert in_flight(srv, "buf") == 0
        assert_served_after(srv, "buf", host="buf.test", workers=1)
        c.send(body[400 * 1024:])
        r = c.response()
        assert r.status == 200
        assert json.loads(r.body) == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    poll_until(lambda: not temp_files(srv), what="the spool file to be gone")
    assert_served_after(srv, "buf", host="buf.test", workers=1)


@pytest.mark.parametrize("host,query", [
    ("nobuf.test", ""),                           # response_buffering: false
    ("buf.test", "&type=text/event-stream"),      # streams are never buffered
    ("buf.test", "&xab=no"),                      # nor what the app marks X-Accel-Buffering: no
])
def test_unbuffered_responses_keep_the_worker_at_the_clients_pace(srv, host, query):
    app = host.split(".")[0]
    with RawConn(srv.port, timeout=30) as c:
        c.send(request("GET", f"/big?n={BIG}{query}", host=host, close=False))
        first = c.sock.recv(100)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(1)
        assert in_flight(srv, app) == 1  # the worker waits for this client
        assert not temp_files(srv)
        _, got = read_response(c, first)
        assert got == BIG
    assert_served_after(srv, app, host=host, workers=1)


def test_an_unbuffered_upload_streams_to_the_worker(srv):
    body = os.urandom(1024 * 1024)
    with RawConn(srv.port, timeout=30) as c:
        c.send(request("POST", "/echo", host="nobuf.test", close=False,
                       headers=[("Content-Length", str(len(body)))]) + body[:400 * 1024])
        poll_until(lambda: in_flight(srv, "nobuf") == 1, what="the worker to take the upload")
        c.send(body[400 * 1024:])
        r = c.response()
        assert json.loads(r.body) == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert_served_after(srv, "nobuf", host="nobuf.test", workers=1)


def test_a_client_that_gives_up_leaves_its_worker_busy_until_it_has_answered(make_server, apps_dir):
    """Issue 11 item 2: the worker still runs the abandoned request, so the next request goes to
    the idle worker (it used to be routed into the busy one and wait there)."""
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir), min_processes=2,
                                         max_processes=2)]})
    poll_until(lambda: sum(w["state"] == "ready" for w in s.app_status("a")["workers"]) == 2,
               what="two ready workers")
    with pytest.raises((TimeoutError, socket.timeout)):  # as `curl -m 1`
        s.get("/slow?t=6", timeout=1)
    time.sleep(0.5)
    busy = [w["pid"] for w in s.app_status("a")["workers"] if w["in_flight"]]
    assert len(busy) == 1, busy  # still counted busy after its client left
    # the other worker is idle: it serves the next request at once (3 s; the busy one has ~4.5 s left)
    status, _, body = s.get("/pid", timeout=3)
    assert status == 200 and int(body) != busy[0]
    assert [w["pid"] for w in s.app_status("a")["workers"] if w["in_flight"]] == busy
    poll_until(lambda: all(w["in_flight"] == 0 for w in s.app_status("a")["workers"]), timeout=20,
               what="the abandoned requests to end")
    assert_served_after(s, "a", workers=2)
