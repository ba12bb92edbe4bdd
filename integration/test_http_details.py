"""Issue 12 item 8: HTTP details a newcomer (or REDbot) notices, each compared with nginx and the
RFC, proven with raw bytes (rawhttp.RawConn) through the real CLI.

After every bad case the test asserts what comes next: the next request on the same app is served
and `status --json` shows nothing in flight, nothing queued and the same live worker.
"""
import json
import sys
import time
from email.utils import parsedate_to_datetime

import pytest

from harness import Server, app_config, copy_app
from rawhttp import RawConn, exchange, poll_until, request


def settled(s, app: str, workers: int = 1) -> list[int]:
    """`status --json` shows `app` with nothing in flight or queued and `workers` ready workers;
    returns their pids."""
    def check():
        r = s.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        a = next(a for a in json.loads(r.stdout)["apps"] if a["name"] == app)
        ready = [w for w in a["workers"] if w["state"] == "ready"]
        if a["queue"] == 0 and all(w["in_flight"] == 0 for w in a["workers"]) and len(ready) == workers:
            return [w["pid"] for w in ready]
        return None
    return poll_until(check, timeout=10, what=f"{app} to have nothing in flight and {workers} ready worker(s)")


def raw_worker_app(apps_dir, name: str = "raw", **kw) -> dict:
    return app_config(name, copy_app("raw_worker", apps_dir), type="command",
                      command=[sys.executable, "worker.py", "$PASSENGER_LITE_SOCKET"], **kw)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """wsgi_echo (app.test) with a public/ file, and the raw-HTTP fake worker (raw.test), one
    worker each so that 'the next request is served' means by the same worker."""
    d = tmp_path_factory.mktemp("details")
    apps = d / "apps"
    apps.mkdir()
    root = copy_app("wsgi_echo", apps)
    (root / "public").mkdir()
    (root / "public" / "hello.txt").write_bytes(b"hello from public\n")
    s = Server(d / "s", {"apps": [
        app_config("py", root, hosts=["app.test"], min_processes=1, max_processes=1),
        raw_worker_app(apps, hosts=["raw.test"], response_timeout=5, min_processes=1, max_processes=1),
    ]})
    s.start()
    s.pids = {"py": settled(s, "py"), "raw": settled(s, "raw")}
    yield s
    s.stop()


def next_is_served(s, app: str) -> None:
    """The next request on `app` is served at once, on a fresh connection, by the same worker."""
    if app == "py":
        r = exchange(s.port, request("GET", "/pid"))
        assert (r.status, int(r.body)) == (200, s.pids["py"][0])
    else:
        r = exchange(s.port, request("GET", "/ok", host="raw.test"))
        assert (r.status, r.body) == (200, b"ok")
    assert settled(s, app) == s.pids[app]


# ---------------------------------------------------------------------------- a. Date


def one_fresh_date(r, before: float) -> None:
    assert r.count("date") == 1, r.raw_head
    t = parsedate_to_datetime(r.headers["date"]).timestamp()
    assert before - 1 <= t <= time.time() + 1, r.headers["date"]


def test_every_response_has_exactly_one_date_header(make_server, apps_dir):
    """Set by the front on every response (as nginx does: the worker's own Date is replaced),
    whatever the app type: WSGI sent none, uvicorn and Node send one, Puma none."""
    raw = raw_worker_app(apps_dir, hosts=["raw.test"])
    py = copy_app("wsgi_echo", apps_dir)
    (py / "public").mkdir()
    (py / "public" / "f.txt").write_bytes(b"file\n")
    s = make_server({"apps": [
        app_config("py", py, hosts=["py.test"]),
        app_config("asgi", copy_app("starlette_app", apps_dir), hosts=["asgi.test"]),
        app_config("rack", copy_app("rack_echo", apps_dir), hosts=["rack.test"]),
        app_config("node", copy_app("node_echo", apps_dir), hosts=["node.test"]),
        raw,
    ]})
    before = time.time()
    for host, path in (("py.test", "/"), ("asgi.test", "/"), ("rack.test", "/"), ("node.test", "/"),
                       ("raw.test", "/ok"), ("raw.test", "/old-date"), ("py.test", "/f.txt"),
                       ("py.test", "/stream"), ("nowhere.test", "/"), ("raw.test", "/app-500")):
        for method in ("GET", "HEAD"):
            r = exchange(s.port, request(method, path, host=host), method)
            assert r.status in (200, 404, 500), (host, path, r.status)
            one_fresh_date(r, before)
    # the front's own answers too: a 304, a 502, a 400 from the parser
    r = exchange(s.port, request("GET", "/f.txt", host="py.test", headers=[("If-None-Match", "*")]))
    assert r.status == 304
    one_fresh_date(r, before)
    r = exchange(s.port, request("GET", "/garbage", host="raw.test"))
    assert r.status == 502
    one_fresh_date(r, before)
    r = exchange(s.port, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert r.status == 400
    one_fresh_date(r, before)
    # keep-alive: every response on one connection has its own
    with RawConn(s.port) as c:
        for _ in range(3):
            c.send(request("GET", "/", host="py.test", close=False))
            one_fresh_date(c.response(), before)


# ---------------------------------------------------------------------------- b. 100 Continue


def test_100_continue_is_never_sent_to_http_10_clients(site):
    """RFC 9110 10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request (it must not
    send 1xx to a 1.0 client at all, 15.2); 1.1 clients still get it."""
    head = (b"POST /echo HTTP/1.0\r\nHost: app.test\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n")
    with RawConn(site.port) as c:
        c.send(head)
        assert c.still_open(0.5)  # nothing: no interim answer, and the body is awaited
        c.send(b"hello")
        interim, r = c.final()
        assert interim == [] and r.status == 200 and b"HTTP/1.1 100" not in r.raw_head
        assert json.loads(r.body)["length"] == 5
    with RawConn(site.port) as c:
        c.send(head.replace(b"HTTP/1.0", b"HTTP/1.1"))
        r = c.response()
        assert r.status == 100
        c.send(b"hello")
        assert c.response().status == 200
    next_is_served(site, "py")


# ---------------------------------------------------------------------------- d. Proxy-Authorization


def test_proxy_authorization_is_forwarded_as_nginx_does(site):
    """We never ask for proxy credentials (no 407 of our own), so they are not ours to consume:
    passed to the app as nginx passes them, unless the client names them in Connection."""
    r = exchange(site.port, request("GET", "/env", headers=[("Proxy-Authorization", "Basic dTpw")]))
    assert json.loads(r.body)["headers"]["PROXY_AUTHORIZATION"] == "Basic dTpw"
    r = exchange(site.port, request("GET", "/env", headers=[("Proxy-Authorization", "Basic dTpw"),
                                                            ("Connection", "Proxy-Authorization")]))
    assert "PROXY_AUTHORIZATION" not in json.loads(r.body)["headers"]
    # and an app's 407 reaches the client with its challenge
    r = exchange(site.port, request("GET", "/proxy-auth", host="raw.test"))
    assert r.status == 407 and r.headers["proxy-authenticate"] == 'Basic realm="app"'
    next_is_served(site, "raw")


# ---------------------------------------------------------------------------- e. Connection: close + more


@pytest.mark.parametrize("first, rest", [
    (request("GET", "/pid"), request("GET", "/env", close=False)),           # a pipelined request
    (request("GET", "/pid"), b"garbage\r\n\r\n"),                             # junk
    (request("GET", "/pid", version="HTTP/1.0", close=False), request("GET", "/env")),  # 1.0: closes
    (request("POST", "/echo", body=b"abc"), request("GET", "/env")),           # after a body
])
def test_bytes_after_a_closing_request_are_ignored(site, first, rest):
    """As nginx: the request that closes the connection is served, then the connection closes;
    what the client sent after it is never parsed (it used to get 400 for the whole connection)."""
    with RawConn(site.port) as c:
        c.send(first + rest)
        r = c.response()
        assert r.status == 200, r.body[:300]
        assert c.closed_by_server()
    next_is_served(site, "py")


def test_requests_before_the_closing_one_are_all_served(site):
    with RawConn(site.port) as c:
        c.send(request("GET", "/pid", close=False) + request("GET", "/pid") + request("GET", "/env"))
        assert [c.response().status, c.response().status] == [200, 200]
        assert c.closed_by_server()
    next_is_served(site, "py")


def test_bytes_after_a_closing_request_in_flight_do_not_cut_its_answer(site):
    """The extra bytes come while the closing request is at the worker: its answer still
    arrives whole (it used to be replaced by a 400)."""
    with RawConn(site.port) as c:
        c.send(request("GET", "/slow?t=2"))
        site.wait_status(lambda st: sum(w["in_flight"] for a in st["apps"] if a["name"] == "py"
                                        for w in a["workers"]) == 1, "the closing request at the worker")
        c.send(request("GET", "/env"))
        r = c.response()
        assert (r.status, r.body) == (200, b"slept\n")
        assert c.closed_by_server()
    next_is_served(site, "py")


# ---------------------------------------------------------------------------- f. response head limit


@pytest.mark.parametrize("path", ["/big-head?n=70000", "/big-head?n=1000000", "/endless-head"])
def test_a_response_head_over_64_kib_is_502(site, path):
    """nginx answers 502 past proxy_buffer_size (4k/8k); we allow 64 KiB (MAX_RESPONSE_HEAD):
    beyond it, 502, the worker's connection dropped, the worker released (not replaced)."""
    with RawConn(site.port) as c:
        c.send(request("GET", path, host="raw.test", close=False))
        r = c.response()
        assert r.status == 502, r.raw_head[:300]
        assert r.count("x-big-0") == 0
        # the same client connection goes on
        c.send(request("GET", "/ok", host="raw.test", close=False))
        assert c.response().body == b"ok"
    next_is_served(site, "raw")
    assert "response head over 65536 bytes" in site.logs()


def test_a_response_head_under_the_limit_passes_whole(site):
    r = exchange(site.port, request("GET", "/big-head?n=60000", host="raw.test"))
    assert r.status == 200 and r.body == b"ok"
    assert r.count("x-big-0") == 1 and sum(len(k) + len(r.headers[k]) for k in r.headers) > 59000
    next_is_served(site, "raw")
