"""Issue 7 item 5: the HTTP edge rules of the front door, each proven with the raw bytes.

A plain HTTP client cannot send most of these requests, so every test writes its bytes itself
(rawhttp.RawConn). Request-side rules use the wsgi_echo app, whose /env answers with what the
app was given; worker-side rules use tests/apps/raw_worker, a fake worker that answers with
canned, mostly broken, HTTP (app type `command`).
"""
import json
import subprocess
import sys

import pytest

from checks import assert_served_after
from harness import Server, app_config, copy_app
from rawhttp import RawConn, exchange, request

# ---------------------------------------------------------------------------- the request side


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """site (app.test, /), admin (app.test, /admin), ex (example.com): all wsgi_echo."""
    d = tmp_path_factory.mktemp("edge")
    apps = d / "apps"
    apps.mkdir()
    root = copy_app("wsgi_echo", apps)
    s = Server(d / "s", {"client_header_timeout": 30, "apps": [
        app_config("site", root, hosts=["app.test"]),
        app_config("admin", root, hosts=["app.test"], path="/admin"),
        app_config("ex", root, hosts=["example.com"]),
    ]})
    s.start()
    yield s
    s.stop()


def closing_answer(port: int, data: bytes) -> int:
    """Send raw bytes; the status of the answer, once the server has also closed the connection."""
    with RawConn(port, timeout=10) as c:
        c.send(data)
        status = c.response().status
        assert c.closed_by_server()
        return status


def env_of(s, data: bytes) -> dict:
    r = exchange(s.port, data)
    assert r.status == 200, (r.status, r.body[:300])
    return json.loads(r.body)


def test_underscore_header_names_never_reach_the_app(edge):
    # WSGI and Rack fold '-' and '_' into one name: X_Real_IP would pass for X-Real-IP
    env = env_of(edge, request("GET", "/env", headers=[
        ("X_Forwarded_For", "7.7.7.7"), ("X_Real_IP", "7.7.7.7"), ("X_Forwarded_Proto", "https"),
        ("X_Custom", "underscore"), ("X-Custom", "dash")]))
    h = env["headers"]
    assert h["X_FORWARDED_FOR"] == "127.0.0.1"
    assert h["X_REAL_IP"] == "127.0.0.1" and env["REMOTE_ADDR"] == "127.0.0.1"
    assert h["X_FORWARDED_PROTO"] == "http" and env["wsgi.url_scheme"] == "http"
    assert h["X_CUSTOM"] == "dash"


def test_client_forwarding_headers_are_replaced_or_removed(edge):
    env = env_of(edge, request("GET", "/env", headers=[
        ("X-Forwarded-For", "6.6.6.6"), ("X-Real-IP", "6.6.6.6"), ("Forwarded", "for=6.6.6.6;proto=https"),
        ("X-Forwarded-Host", "evil.test"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "443")]))
    h = env["headers"]
    assert h["X_FORWARDED_FOR"] == "127.0.0.1"
    assert h["X_REAL_IP"] == "127.0.0.1" and env["REMOTE_ADDR"] == "127.0.0.1"
    assert h["X_FORWARDED_HOST"] == "app.test"
    assert h["X_FORWARDED_PROTO"] == "http"
    assert h["X_FORWARDED_PORT"] == str(edge.port)
    assert "FORWARDED" not in h


def test_forwarding_headers_from_a_trusted_proxy_are_kept_and_completed(make_server, apps_dir):
    s = make_server({"trusted_proxies": ["127.0.0.0/8"],
                     "apps": [app_config("site", copy_app("wsgi_echo", apps_dir))]})
    env = env_of(s, request("GET", "/env", headers=[
        ("X-Forwarded-For", "6.6.6.6"), ("X-Real-IP", "6.6.6.6"), ("Forwarded", "for=6.6.6.6;proto=https"),
        ("X-Forwarded-Host", "public.test"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "443")]))
    h = env["headers"]
    assert h["X_FORWARDED_FOR"] == "6.6.6.6, 127.0.0.1"
    assert h["X_REAL_IP"] == "6.6.6.6" and env["REMOTE_ADDR"] == "6.6.6.6"
    assert h["X_FORWARDED_HOST"] == "public.test"  # one value: not doubled with ours
    assert h["X_FORWARDED_PROTO"] == "https" and env["wsgi.url_scheme"] == "https"
    assert h["X_FORWARDED_PORT"] == "443"
    assert h["FORWARDED"] == "for=6.6.6.6;proto=https"
    # what the trusted proxy did not send is filled in from this hop
    env = env_of(s, request("GET", "/env", headers=[("X-Forwarded-For", "5.5.5.5, 6.6.6.6")]))
    h = env["headers"]
    assert h["X_FORWARDED_FOR"] == "5.5.5.5, 6.6.6.6, 127.0.0.1"
    assert h["X_REAL_IP"] == "6.6.6.6"  # the address the trusted proxy itself saw
    assert h["X_FORWARDED_HOST"] == "app.test" and h["X_FORWARDED_PROTO"] == "http"
    assert h["X_FORWARDED_PORT"] == str(s.port)


def test_hop_by_hop_and_connection_named_headers_are_removed(edge):
    env = env_of(edge, request("GET", "/env", close=False, headers=[
        ("Connection", "keep-alive, X-Secret"), ("Connection", "x-other"), ("X-Secret", "1"), ("X-Other", "2"),
        ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Trailer", "X-T"), ("Proxy-Connection", "keep-alive"),
        ("X-Kept", "3")]))
    h = env["headers"]
    for gone in ("X_SECRET", "X_OTHER", "KEEP_ALIVE", "TE", "TRAILER", "PROXY_CONNECTION"):
        assert gone not in h, gone
    assert h["X_KEPT"] == "3"


@pytest.mark.parametrize("host", ["evil@app.test", "app.test/x", "app.test:abc", "app.test x", "app.test\\x",
                                  "[::1", "app.test:80:80"])
def test_hosts_that_are_not_a_host_are_rejected(edge, host):
    r = exchange(edge.port, request("GET", "/env", host=host))
    assert r.status == 400


def test_host_is_normalised_before_routing(edge):
    for host in ("Example.COM.:8080", "EXAMPLE.com", "example.com.", "example.com:443"):
        env = env_of(edge, request("GET", "/env", host=host))
        assert env["env"]["PASSENGER_LITE_APP"] == "ex", host


def test_missing_or_doubled_host(edge):
    assert exchange(edge.port, request("GET", "/env", host=None)).status == 400  # HTTP/1.1 needs Host
    assert exchange(edge.port, request("GET", "/env", headers=[("Host", "example.com")])).status == 400
    # HTTP/1.0 without Host: routed on the (empty) Host, never on the address it came to
    assert exchange(edge.port, request("GET", "/env", host=None, version="HTTP/1.0")).status == 404


def test_absolute_form_targets(edge):
    # an authority other than Host is a 400, not a 500 and not a second routing key
    assert exchange(edge.port, request("GET", "http://example.com/env")).status == 400
    assert exchange(edge.port, request("GET", "http://evil@app.test/env")).status == 400
    # the same authority (any case, port, trailing dot) is fine and routed on it
    env = env_of(edge, request("GET", "http://APP.test.:8080/admin/env?a=1"))
    assert env["env"]["PASSENGER_LITE_APP"] == "admin"
    assert env["PATH_INFO"] == "/env" and env["QUERY_STRING"] == "a=1"
    # HTTP/1.0 without Host: the authority is the host
    env = env_of(edge, request("GET", "http://example.com/env", host=None, version="HTTP/1.0"))
    assert env["env"]["PASSENGER_LITE_APP"] == "ex"


def test_connect_and_asterisk_form(edge):
    assert exchange(edge.port, request("CONNECT", "app.test:443", host="app.test:443")).status == 405
    r = exchange(edge.port, request("OPTIONS", "*"))
    assert r.status == 200 and "GET" in r.headers["allow"]


@pytest.mark.parametrize("target", ["/foo%", "/foo%2", "/foo%zz/bar", "/admin/%g0", "/%"])
def test_broken_percent_escapes_are_rejected(edge, target):
    assert exchange(edge.port, request("GET", target)).status == 400


@pytest.mark.parametrize("target,app,path_info", [
    ("/admin/../env", "site", "/env"),
    ("/admin/%2e%2e/env", "site", "/env"),
    ("/admin/%2E%2e/env", "site", "/env"),
    ("/admin/.%2e/env", "site", "/env"),
    ("/admin/./../env", "site", "/env"),
    ("/x/../admin/env", "admin", "/env"),
    ("/./admin/./env", "admin", "/env"),
    ("/../../admin/env", "admin", "/env"),
    ("/%61dmin/env", "admin", "/env"),       # unreserved escapes decoded: %61 is 'a'
])
def test_dot_segments_are_removed_before_routing(edge, target, app, path_info):
    """/admin/../x can never reach the admin app, nor /x/../admin escape it: routing and the app
    both see the one canonical path."""
    env = env_of(edge, request("GET", target + "?q=%2e%2e/"))
    assert env["env"]["PASSENGER_LITE_APP"] == app
    assert env["PATH_INFO"] == path_info
    assert env["QUERY_STRING"] == "q=%2e%2e/"  # the query is not a path: left as sent


@pytest.mark.parametrize("line", [b"GET /\r\n", b"GET /env\r\nHost: app.test\r\n\r\n", b"GET / HTTP\r\n"])
def test_http_09_request_lines_are_answered_400_at_once(edge, line):
    # the header timeout is 30 s and the socket waits 10 s: an answer here came without waiting
    assert closing_answer(edge.port, line) == 400


@pytest.mark.parametrize("data", [
    b"GET / HTTP/2.0\r\nHost: app.test\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",     # the HTTP/2 connection preface
    b"GET / HTTP/3.0\r\nHost: app.test\r\n\r\n",
])
def test_http_2_and_later_are_answered_505(edge, data):
    assert closing_answer(edge.port, data) == 505


@pytest.mark.parametrize("te", [
    [("Transfer-Encoding", "gzip, chunked")],
    [("Transfer-Encoding", "identity")],
    [("Transfer-Encoding", "chunked, chunked")],
    [("Transfer-Encoding", "gzip")],
    [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
])
def test_transfer_encodings_other_than_chunked_are_501(edge, te):
    r = exchange(edge.port, request("POST", "/echo", headers=te, close=False) + b"0\r\n\r\n")
    assert r.status == 501
    assert_served_after(edge, "site", host="app.test")


def test_chunked_on_http_10_is_400(edge):
    r = exchange(edge.port, request("POST", "/echo", version="HTTP/1.0", headers=[
        ("Transfer-Encoding", "chunked")], close=False) + b"5\r\nhello\r\n0\r\n\r\n")
    assert r.status == 400
    # the same body on HTTP/1.1 is fine
    r = exchange(edge.port, request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")])
                 + b"5\r\nhello\r\n0\r\n\r\n")
    assert r.status == 200 and json.loads(r.body)["length"] == 5


@pytest.mark.parametrize("data", [
    # the classic smuggling inputs llhttp rejects: CL+TE, two CLs, bare LF, NUL, obs-fold, space before ':'
    b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
    b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: +2\r\n\r\nab",
    b"GET /env HTTP/1.1\nHost: app.test\n\n",
    b"GET /env HTTP/1.1\r\nHost: app.test\r\nX-A: a\x00b\r\n\r\n",
    b"GET /env HTTP/1.1\r\nHost: app.test\r\nX-A: a\r\n b\r\n\r\n",
    b"GET /env HTTP/1.1\r\nHost: app.test\r\nX-A : 1\r\n\r\n",
    b"GET /env HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
])
def test_smuggling_inputs_are_rejected_by_the_parser(edge, data):
    assert closing_answer(edge.port, data) == 400
    assert_served_after(edge, "site", host="app.test")


@pytest.mark.parametrize("upgrade", ["h2c", "foo/1", "WebSocket2"])
def test_non_websocket_upgrades_are_never_tunnelled(edge, upgrade):
    with RawConn(edge.port) as c:
        c.send(request("GET", "/env", close=False, headers=[
            ("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", upgrade), ("HTTP2-Settings", "AAMAAABkAAQAAP__")])
            + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        r = c.response()
        # answered as plain HTTP/1.1, the app never told of the upgrade, and the connection ends
        assert r.status == 200
        h = json.loads(r.body)["headers"]
        assert "UPGRADE" not in h and "HTTP2_SETTINGS" not in h
        assert r.headers.get("connection") == "close" and "upgrade" not in r.headers
        assert c.closed_by_server()


def test_the_c_parser_is_required_at_start_up(tmp_path, apps_dir):
    cfg = tmp_path / "sites.yaml"
    cfg.write_text(f"listen: ['127.0.0.1:0']\napps:\n  - name: a\n    root: {copy_app('wsgi_echo', apps_dir)}\n")
    code = ("import sys; sys.modules['aiohttp._http_parser'] = None\n"
            "from passenger_lite.manager.cli import main; main()")
    p = subprocess.run([sys.executable, "-c", code, "start", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1, p
    assert "aiohttp's C HTTP parser" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- the worker side


def raw_worker_app(apps_dir, name: str = "raw", **kw) -> dict:
    return app_config(name, copy_app("raw_worker", apps_dir), type="command",
                      command=[sys.executable, "worker.py", "$PASSENGER_LITE_SOCKET"], **kw)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """raw: the fake raw-HTTP worker (one process, response_timeout 2 s); broken: cannot start."""
    d = tmp_path_factory.mktemp("bad")
    apps = d / "apps"
    apps.mkdir()
    broken = apps / "broken"
    broken.mkdir()
    (broken / "passenger_wsgi.py").write_text("raise RuntimeError('this app cannot start')\n")
    s = Server(d / "s", {"apps": [
        raw_worker_app(apps, response_timeout=2, min_processes=1, max_processes=1),
        app_config("broken", broken, path="/broken", min_processes=0),
    ]})
    s.start()
    yield s
    s.stop()


def get(port: int, path: str, conn: RawConn | None = None):
    data = request("GET", path, close=conn is None)
    if conn is None:
        return exchange(port, data)
    conn.send(data)
    return conn.final()[1]


@pytest.mark.parametrize("path", ["/cl-te", "/two-cl", "/two-cl-same", "/te-gzip", "/te-gzip-chunked", "/garbage",
                                  "/close"])
def test_worker_responses_with_broken_framing_are_502(bad, path):
    with RawConn(bad.port) as c:
        r = get(bad.port, path, c)
        assert r.status == 502, (path, r.body[:200])
        assert b"hello" not in r.body
    assert_served_after(bad, "raw", "/ok", workers=1)  # and the app goes on serving


def test_interim_responses_are_never_taken_as_final(bad):
    with RawConn(bad.port) as c:
        for path, status, body in (("/early-hints", 200, b"final"), ("/two-interim", 201, b"done")):
            c.send(request("GET", path, close=False))
            interim, r = c.final()
            assert (r.status, r.body) == (status, body)
            assert all(i.status in (100, 103) for i in interim)  # passed on or skipped, never final
        assert get(bad.port, "/ok", c).status == 200  # the client connection is still in step


def worker_report(port: int) -> dict:
    r = get(port, "/report")
    assert r.status == 200
    return json.loads(r.body)


def test_an_unasked_101_is_502_and_its_connection_is_never_reused(bad):
    before = worker_report(bad.port)
    # a plain request, and one asking for h2c (never tunnelled): the worker answers 101 to both
    assert get(bad.port, "/upgrade").status == 502
    r = exchange(bad.port, request("GET", "/upgrade", close=False, headers=[
        ("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__")]))
    assert r.status == 502
    with RawConn(bad.port) as c:
        numbers = {int(get(bad.port, "/conn", c).body) for _ in range(5)}
    after = worker_report(bad.port)
    upgraded = set(after["upgraded"]) - set(before["upgraded"])
    assert len(upgraded) == 2
    assert not numbers & upgraded            # no later request went to a switched connection
    assert after["after_upgrade"] == 0       # and nothing at all was written to one
    assert_served_after(bad, "raw", "/ok", workers=1)


def test_a_worker_that_does_not_answer_in_time_gets_504(bad):
    r = get(bad.port, "/hang")
    assert r.status == 504
    assert_served_after(bad, "raw", "/ok", workers=1)


def test_a_response_cut_short_is_never_completed(bad):
    with RawConn(bad.port) as c:
        c.send(request("GET", "/half", close=False))
        with pytest.raises(ConnectionError, match="10 of 100"):
            c.response()
    assert_served_after(bad, "raw", "/ok", workers=1)


def test_an_app_that_cannot_start_gets_503_and_app_errors_pass_unchanged(bad):
    assert get(bad.port, "/broken/").status == 503
    r = get(bad.port, "/app-500")
    assert (r.status, r.body) == (500, b"oops")  # the app's own 500; the proxy never makes one


def test_the_request_head_a_worker_receives(bad):
    """What reaches the worker, byte for byte: each forwarding header once and ours, no
    underscore names, no hop-by-hop or Connection-named headers, Host as sent."""
    r = exchange(bad.port, request(
        "GET", "/x/../head", host="App.Test.:8080", close=False, headers=[
            ("X_Forwarded_For", "7.7.7.7"), ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Host", "evil.test"),
            ("Forwarded", "for=6.6.6.6"), ("X-Real-IP", "6.6.6.6"), ("Connection", "X-Secret"), ("X-Secret", "1"),
            ("Keep-Alive", "timeout=1"), ("Upgrade", "h2c"), ("X-Kept", "yes")]))
    assert r.status == 200
    lines = r.body.decode("latin-1").split("\r\n")
    assert lines[0] == "GET /head HTTP/1.1"
    names = [ln.split(":", 1)[0].lower() for ln in lines[1:] if ln]
    assert "_" not in "".join(names)
    for gone in ("forwarded", "x-secret", "keep-alive", "upgrade", "connection"):
        assert gone not in names, gone
    for once in ("host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
                 "x-real-ip", "x-request-id", "x-kept"):
        assert names.count(once) == 1, (once, lines)
    head = dict(ln.split(": ", 1) for ln in lines[1:] if ln)
    assert head["Host"] == "App.Test.:8080" and head["X-Forwarded-For"] == "127.0.0.1"
    assert head["X-Forwarded-Host"] == "App.Test.:8080" and head["X-Real-IP"] == "127.0.0.1"
