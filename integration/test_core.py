"""Issue 2: the core slice, through the real CLI and real Python workers."""
import json
import os
import re
import signal
import threading
import time

import pytest

from harness import Server, alive, app_config, app_of, copy_app


def test_routes_by_host_and_path_to_wsgi_flask_and_starlette(make_server, apps_dir):
    wsgi = copy_app("wsgi_echo", apps_dir)
    flask = copy_app("flask_app", apps_dir)
    star = copy_app("starlette_app", apps_dir)
    s = make_server({"apps": [
        app_config("plain", wsgi),
        app_config("flask", flask, type="python-wsgi", entry="app:app", hosts=["flask.test"]),
        app_config("star", star, hosts=["*.star.test"], path="/api"),
    ]})
    assert s.get("/")[2] == b"hello from wsgi\n"
    assert s.get("/", host="flask.test")[2] == b"hello from flask\n"
    assert s.get("/api/", host="x.star.test")[2] == b"hello from starlette\n"
    status, headers, _ = s.get("/api", host="x.star.test")  # the app redirects its bare mount point
    assert status == 307 and headers["location"].endswith("/api/")
    # a wildcard host app mounted at /api: other paths of that host fall through to the catch-all
    assert s.get("/other", host="x.star.test")[2] == b"hello from wsgi\n"
    # /apifoo is not under /api
    assert s.get("/apifoo", host="x.star.test")[2] == b"hello from wsgi\n"
    # Host matching ignores case, port and a trailing dot
    assert s.get("/", host="FLASK.test.:8080")[2] == b"hello from flask\n"


def test_sub_path_apps_see_script_name_and_root_path(make_server, apps_dir):
    wsgi = copy_app("wsgi_echo", apps_dir)
    flask = copy_app("flask_app", apps_dir)
    star = copy_app("starlette_app", apps_dir)
    s = make_server({"apps": [
        app_config("plain", wsgi, path="/plain"),
        app_config("flask", flask, entry="app:app", type="python-wsgi", path="/f"),
        app_config("star", star, path="/s/t"),
    ]})
    env = s.get_json("/plain/env?x=1")
    assert env["SCRIPT_NAME"] == "/plain" and env["PATH_INFO"] == "/env" and env["QUERY_STRING"] == "x=1"
    env = s.get_json("/f/env")
    assert env["script_name"] == "/f" and env["path_info"] == "/env" and env["url_for_index"] == "/f/"
    env = s.get_json("/s/t/env")
    assert env["root_path"] == "/s/t" and env["path"] == "/s/t/env"
    assert s.get("/nothing-here")[0] == 404


def test_forwarded_headers_are_set_by_the_proxy(make_server, apps_dir):
    s = make_server({"apps": [app_config("plain", copy_app("wsgi_echo", apps_dir))]})
    env = s.get_json("/env", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
                                      "X-Forwarded-Host": "evil.test", "X-Real-IP": "6.6.6.6",
                                      "X_Forwarded_For": "7.7.7.7", "Connection": "X-Secret",
                                      "X-Secret": "1", "Keep-Alive": "timeout=5"})
    h = env["headers"]
    assert h["X_FORWARDED_FOR"] == "127.0.0.1"
    assert h["X_FORWARDED_PROTO"] == "http"
    assert h["X_FORWARDED_HOST"].startswith("127.0.0.1")
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert "X_SECRET" not in h and "KEEP_ALIVE" not in h
    assert h["X_REQUEST_ID"]
    env2 = s.get_json("/env", headers={"X-Request-Id": "abc-123"})
    assert env2["headers"]["X_REQUEST_ID"] == "abc-123"


@pytest.mark.parametrize("app", ["wsgi_echo", "starlette_app"])
def test_post_and_chunked_bodies(make_server, apps_dir, app):
    s = make_server({"apps": [app_config("a", copy_app(app, apps_dir))]})
    import hashlib
    for size in (0, 10, 200_000, 3_000_000):
        data = os.urandom(size)
        status, _, body = s.request("POST", "/echo", body=data)
        assert status == 200, body
        assert json.loads(body) == {"length": size, "sha256": hashlib.sha256(data).hexdigest()}
    # chunked request body (a generator makes http.client send Transfer-Encoding: chunked)
    parts = [os.urandom(70_000) for _ in range(5)]
    status, _, body = s.request("POST", "/echo", body=iter(parts))
    assert status == 200
    assert json.loads(body)["length"] == 350_000
    # chunked response
    status, headers, body = s.get("/stream?n=4")
    assert status == 200 and body == b"part 0\npart 1\npart 2\npart 3\n"
    assert headers.get("transfer-encoding") == "chunked"


def test_queue_full_gives_503_and_queue_wait_gives_504(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir), min_processes=1, max_processes=1,
                                         max_queue=1, queue_timeout=1)]})
    results = {}

    def slow(key, t):
        results[key] = s.get(f"/slow?t={t}")[0]

    t1 = threading.Thread(target=slow, args=("busy", 2.5))
    t1.start()
    s.wait_status(lambda st: app_of(st, "a")["workers"][0]["in_flight"] == 1, "the first request at the worker")
    t2 = threading.Thread(target=slow, args=("queued", 0))
    t2.start()
    s.wait_status(lambda st: app_of(st, "a")["queue"] == 1, "the second request queued")
    status, headers, body = s.get("/")       # the queue (max 1) is full
    assert status == 503 and b"503" in body
    t2.join()
    assert results["queued"] == 504           # waited more than queue_timeout
    t1.join()
    assert results["busy"] == 200
    assert s.get("/")[0] == 200


def test_worker_killed_mid_request_gives_502_then_next_request_is_served(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir), min_processes=1)]})
    status, _, _ = s.get("/crash")
    assert status == 502
    # a response already begun is cut, never completed as if whole
    c = s.connection()
    c.request("GET", "/crash-mid")
    r = c.getresponse()
    assert r.status == 200
    with pytest.raises(Exception):
        r.read()
    c.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        if s.get("/")[0] == 200:
            break
        time.sleep(0.1)
    assert s.get("/")[0] == 200


def test_sigkill_of_the_manager_leaves_no_process_behind(tmp_path, apps_dir):
    s = Server(tmp_path / "s", {"apps": [
        app_config("a", copy_app("wsgi_echo", apps_dir), min_processes=2),
        app_config("b", copy_app("starlette_app", apps_dir), path="/b", min_processes=1)]})
    s.start()
    try:
        s.track()
        workers = [p for p in s.seen.values() if alive(p)]
        assert len(workers) >= 4  # 3 workers and the watchdog
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(10)
        s.assert_no_leftovers(grace=8)
    finally:
        s._log.close()
        s.kill_leftovers()


def test_port_0_binds_a_free_port_named_in_the_start_line_and_in_status(make_server, apps_dir):
    """`listen: 127.0.0.1:0` (what the harness uses): the system picks the port at bind time, no
    probe-then-bind race; the start log line and `status --json` name the bound port."""
    s = make_server({"listen": ["127.0.0.1:0"], "apps": [app_config("a", copy_app("wsgi_echo", apps_dir))]})
    st = json.loads(s.cli("status", "--json").stdout)
    assert len(st["listen"]) == 1 and st["listen"][0].startswith("http://127.0.0.1:"), st["listen"]
    port = int(st["listen"][0].rsplit(":", 1)[1])
    assert port != 0
    assert f"serving 1 app(s) on http://127.0.0.1:{port}" in s.logs()
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/")
    assert c.getresponse().read() == b"hello from wsgi\n"
    c.close()
    # the config still says :0 and so does the running site: reloading it changes no listener
    r = s.cli("reload")
    assert r.returncode == 0 and "listen" not in r.stdout + r.stderr, r
    assert json.loads(s.cli("status", "--json").stdout)["listen"] == st["listen"]


def test_a_stalled_manager_loop_is_logged_and_fails_the_harness(tmp_path, apps_dir):
    """PASSENGER_LITE_DEBUG_LOOP (set by the harness): the manager logs a loop that did not run for
    longer than the limit, and Server.stop() fails the test. The stall here is the whole manager
    stopped (SIGSTOP) for 2.5 s: nothing of ours blocks the loop that long on purpose."""
    s = Server(tmp_path / "s", {"apps": [app_config("a", copy_app("wsgi_echo", apps_dir))]})
    s.start()
    try:
        assert s.get("/")[0] == 200 and s.loop_stalls() == []
        os.kill(s.proc.pid, signal.SIGSTOP)
        time.sleep(2.5)
        os.kill(s.proc.pid, signal.SIGCONT)
        assert s.get("/")[0] == 200  # it serves again at once
        deadline = time.monotonic() + 10
        while not s.loop_stalls() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(s.loop_stalls()) == 1 and re.search(r"event loop blocked for [2-9]\.\d\d s", s.logs()), s.logs()
    finally:
        with pytest.raises(AssertionError, match="the manager's event loop was blocked"):
            s.stop()
