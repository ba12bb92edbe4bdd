"""Issue 4: crash recovery, error pages, scale to zero, recycling, zero-downtime restart, reload, stop."""
import os
import signal
import threading
import time

import psutil
import pytest
import yaml

from harness import Server, alive, app_config, copy_app, free_port
from load import Load
from rawhttp import poll_until


def pids(s, app):
    return sorted(w["pid"] for w in s.app_status(app)["workers"] if w["state"] == "ready")


def break_app(root):
    (root / "passenger_wsgi.py").write_text("import no_such_module_here\n")


# ---------------------------------------------------------------------------- crash recovery


def test_killed_worker_is_replaced_and_min_processes_kept(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir), min_processes=2)]})
    before = poll_until(lambda: len(pids(s, "a")) == 2 and pids(s, "a"), what="2 workers")
    os.kill(before[0], signal.SIGKILL)
    after = poll_until(lambda: (p := pids(s, "a")) and len(p) == 2 and before[0] not in p and p,
                       what="replacement worker")
    assert before[1] in after
    assert s.app_status("a")["crashes"] == 1
    assert s.get("/")[0] == 200


def test_crash_looping_app_beside_a_healthy_one(make_server, apps_dir):
    good = copy_app("wsgi_echo", apps_dir)
    bad = apps_dir / "bad"
    bad.mkdir()
    break_app(bad)
    s = make_server({"environment": "development", "apps": [
        app_config("good", good),
        app_config("bad", bad, type="python-wsgi", entry="passenger_wsgi:application", hosts=["bad.test"]),
    ]})
    status, headers, body = s.get("/", host="bad.test")
    assert status == 503
    page = body.decode()
    # development: app, command, exit status, the worker's output and a hint
    assert "bad" in page and "wsgi_loader.py" in page and "exit status 3" in page
    assert "no_such_module_here" in page and "ModuleNotFoundError" in page
    assert "virtualenv" in page  # the hint for a missing module
    for _ in range(20):
        assert s.get("/")[0] == 200  # the other app keeps serving throughout
    st = poll_until(lambda: (a := s.app_status("bad"))["failed_starts"] >= 2 and a, what="retries with backoff")
    assert st["state"] in ("backoff", "failed", "starting")
    # fixing the app and restarting it brings it back
    (bad / "passenger_wsgi.py").write_text((good / "passenger_wsgi.py").read_text())
    r = s.cli("restart", "bad")
    assert r.returncode == 0, r.stderr
    assert s.get("/", host="bad.test")[0] == 200


def test_a_worker_not_ready_within_start_timeout_is_killed_and_waiters_get_503(make_server, apps_dir):
    slow = apps_dir / "slow"
    slow.mkdir()
    (slow / "passenger_wsgi.py").write_text(
        "import sys, time\nprint('warming up a very slow cache', file=sys.stderr, flush=True)\ntime.sleep(120)\n")
    s = make_server({"environment": "development", "apps": [
        app_config("slow", slow, type="python-wsgi", min_processes=0, start_timeout=1)]})
    status, _, body = s.get("/")
    assert status == 503
    page = body.decode()
    assert "did not answer on its socket within 1 s" in page and "warming up a very slow cache" in page
    st = poll_until(lambda: (a := s.app_status("slow"))["failed_starts"] >= 1 and a, what="failed start recorded")
    assert st["workers"] == []
    def in_app_dir(p):
        try:
            return p.cwd() == str(slow)
        except psutil.Error:
            return False
    left = [p for p in psutil.process_iter() if in_app_dir(p) and alive(p)]
    assert not left, f"the worker that never answered was killed: {left}"


def test_production_error_page_is_plain_with_a_request_id(make_server, apps_dir):
    bad = apps_dir / "bad"
    bad.mkdir()
    break_app(bad)
    s = make_server({"environment": "production", "apps": [app_config("bad", bad, type="python-wsgi")]})
    status, headers, body = s.get("/")
    assert status == 503
    page = body.decode()
    assert "no_such_module_here" not in page and "wsgi_loader" not in page
    assert headers["x-request-id"] in page
    assert "no_such_module_here" in s.logs()  # the details are in the log


def test_app_error_page_file(make_server, apps_dir):
    bad = apps_dir / "bad"
    bad.mkdir()
    break_app(bad)
    (bad / "oops.html").write_text("<h1>We are down</h1><p>ref {{request_id}}</p>")
    s = make_server({"apps": [app_config("bad", bad, type="python-wsgi", error_page="oops.html")]})
    status, headers, body = s.get("/")
    assert status == 503 and b"We are down" in body and headers["x-request-id"].encode() in body


# ---------------------------------------------------------------------------- scale to zero, recycling


def test_scale_to_zero_round_trips(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir), min_processes=0,
                                         idle_timeout=1)]})
    assert s.app_status("a")["workers"] == []
    for _ in range(2):
        status, _, body = s.get("/")       # waits while a worker starts, then is served
        assert status == 200 and body == b"hello from wsgi\n"
        poll_until(lambda: s.app_status("a")["workers"] == [], what="idle worker stopped")
    assert "idle for 1 s" in s.logs()


def test_max_requests_recycles_gracefully(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir), max_requests=5)]})
    seen = []
    for _ in range(3):
        first = int(s.get("/pid")[2])
        for _ in range(6):  # the worker keeps serving until its replacement is ready: nothing waits or fails
            status, _, body = s.get("/pid")
            assert status == 200
        poll_until(lambda: (p := pids(s, "a")) and first not in p, what="replacement after max_requests")
        seen.append(first)
    assert len(set(seen)) == 3
    assert "max_requests" in s.logs()


def test_memory_limit_recycles(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir), memory_limit=60)]})
    first = int(s.get("/pid")[2])
    assert s.get("/hog?mb=100")[0] == 200
    poll_until(lambda: first not in pids(s, "a") and pids(s, "a"), what="replacement after memory_limit")
    assert s.get("/")[0] == 200
    assert "memory_limit" in s.logs()


# ---------------------------------------------------------------------------- restart


@pytest.mark.parametrize("app", ["wsgi_echo", "starlette_app"])
def test_ten_rolling_restarts_under_load_lose_nothing(make_server, apps_dir, app):
    kw = {"min_processes": 2, "max_processes": 2}
    s = make_server({"apps": [app_config("a", copy_app(app, apps_dir), **kw)]})
    with Load(s.port, "/", conns=32) as load:
        load.wait_for(200)
        for i in range(10):
            before = pids(s, "a")
            r = s.cli("restart", "a")
            assert r.returncode == 0, r.stderr
            assert not set(before) & set(pids(s, "a")), "every worker was replaced"
        n = load.answered
        load.wait_for(n + 200)
    assert load.errors == [], load.summary()
    assert set(load.statuses) == {200}, load.summary()
    assert load.sent == load.answered, load.summary()
    assert s.app_status("a")["restarts"] == 10


def test_restart_with_broken_code_keeps_old_workers(make_server, apps_dir):
    root = copy_app("wsgi_echo", apps_dir)
    s = make_server({"apps": [app_config("a", root)]})
    before = pids(s, "a")
    break_app(root)
    r = s.cli("restart", "a")
    assert r.returncode == 1 and "no_such_module_here" in r.stderr + s.logs()
    assert "restart of a failed" in r.stderr
    assert pids(s, "a") == before
    assert s.get("/")[0] == 200


def test_restart_unknown_app_is_a_usage_error(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir))]})
    r = s.cli("restart", "nope")
    assert r.returncode == 2 and "no app named 'nope'" in r.stderr


# ---------------------------------------------------------------------------- reload


def test_reload_adds_removes_and_changes_apps_and_rejects_bad_configs(make_server, apps_dir):
    a = copy_app("wsgi_echo", apps_dir)
    b = copy_app("starlette_app", apps_dir)
    s = make_server({"apps": [app_config("a", a), app_config("b", b, path="/b")]})
    conf = yaml.safe_load(s.config.read_text())
    a_pids = pids(s, "a")
    with Load(s.port, "/", conns=8) as load:
        load.wait_for(50)
        # a bad config is rejected and the old one keeps running
        s.config.write_text(yaml.safe_dump(dict(conf, apps=conf["apps"] + [{"name": "oops"}])))
        r = s.cli("reload")
        assert r.returncode == 2 and "apps[2] (oops).root: required key is missing" in r.stderr
        assert [x["name"] for x in s.status()["apps"]] == ["a", "b"]
        # remove b, add c, change a (env) -> a is restarted
        conf["apps"] = [app_config("a", a, env={"TEST_GEN": "2"}), app_config("c", b, path="/c")]
        s.config.write_text(yaml.safe_dump(conf))
        a_pids = pids(s, "a")
        os.kill(s.proc.pid, signal.SIGHUP)
        poll_until(lambda: "reloaded" in s.logs(), what="reload applied")
        assert [x["name"] for x in s.status()["apps"]] == ["a", "c"]
        assert not set(pids(s, "a")) & set(a_pids), "a was restarted"
        n = load.answered
        load.wait_for(n + 50)
    assert load.errors == [] and set(load.statuses) == {200}, load.summary()
    assert s.get_json("/env")["env"]["TEST_GEN"] == "2"
    assert s.get("/c/")[0] == 200
    assert s.get("/b/")[2] == b"hello from wsgi\n" or s.get("/b/")[0] == 404


# ---------------------------------------------------------------------------- stop


def test_graceful_stop_finishes_in_flight_requests(tmp_path, apps_dir):
    s = Server(tmp_path / "s", {"shutdown_timeout": 10, "apps": [app_config("a", copy_app("wsgi_echo", apps_dir))]})
    s.start()
    result = {}
    t = threading.Thread(target=lambda: result.update(r=s.get("/slow?t=1.5")))
    t.start()
    poll_until(lambda: s.app_status("a")["workers"][0]["in_flight"] == 1, what="request in flight")
    assert s.stop() == 0
    t.join()
    assert result["r"][0] == 200 and result["r"][2] == b"slept\n"


def test_stop_ends_long_requests_after_shutdown_timeout(tmp_path, apps_dir):
    s = Server(tmp_path / "s", {"shutdown_timeout": 1, "apps": [app_config("a", copy_app("wsgi_echo", apps_dir))]})
    s.start()
    errors = []

    def slow():
        try:
            s.get("/slow?t=30")
        except Exception as e:  # noqa: BLE001 - the connection is cut: that is the point
            errors.append(e)
    t = threading.Thread(target=slow)
    t.start()
    poll_until(lambda: s.app_status("a")["workers"][0]["in_flight"] == 1, what="request in flight")
    t0 = time.monotonic()
    assert s.stop(timeout=20) == 0
    t.join(10)
    assert errors and time.monotonic() - t0 < 15


# ---------------------------------------------------------------------------- faults (issue 11)


def settled(s, app, workers: int, timeout: float = 20) -> dict:
    """What comes after a fault: the next request is served at once, nothing is in flight or
    queued, and `workers` workers are ready (none starting, draining or stopping)."""
    t0 = time.monotonic()
    status, _, _ = s.get("/", timeout=timeout)
    assert status == 200 and time.monotonic() - t0 < 5, f"next request: {status} after {time.monotonic() - t0:.1f} s"

    def calm():
        a = s.app_status(app)
        ok = (a["queue"] == 0 and all(w["in_flight"] == 0 for w in a["workers"])
              and [w["state"] for w in a["workers"]] == ["ready"] * workers)
        return ok and a
    return poll_until(calm, timeout=timeout, what=f"{app}: {workers} ready worker(s), nothing in flight")


@pytest.mark.parametrize("app", ["starlette_app", "node_echo"])
def test_a_hung_worker_with_unlimited_concurrency_is_taken_out_and_replaced(make_server, apps_dir, app):
    s = make_server({"shutdown_timeout": 2, "apps": [app_config("a", copy_app(app, apps_dir), response_timeout=2)]})
    assert s.app_status("a")["concurrency"] == 0
    hung = pids(s, "a")[0]
    proc = psutil.Process(hung)
    os.kill(hung, signal.SIGSTOP)
    try:
        assert s.get("/", timeout=20)[0] == 504                  # the request it swallowed
        after = settled(s, "a", 1)                               # the next one goes to a new worker
        assert hung not in [w["pid"] for w in after["workers"]]
        assert after["hangs"] == 1 and after["crashes"] == 0
        poll_until(lambda: not alive(proc), what="the hung worker is killed")
    finally:
        try:
            os.kill(hung, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "is alive but no response within 2 s: replacing it" in s.logs()


def test_an_idle_worker_that_stops_answering_a_liveness_probe_is_replaced(make_server, apps_dir):
    s = make_server({"shutdown_timeout": 1, "apps": [app_config("a", copy_app("wsgi_echo", apps_dir),
                                                                 response_timeout=2)]})
    hung = pids(s, "a")[0]
    os.kill(hung, signal.SIGSTOP)
    try:
        poll_until(lambda: (p := pids(s, "a")) and hung not in p, timeout=30, what="the hung idle worker replaced")
        after = settled(s, "a", 1)
        assert after["hangs"] == 1
    finally:
        try:
            os.kill(hung, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "did not answer a liveness probe within 2 s" in s.logs()


def test_a_worker_killed_under_traffic_is_counted_and_replaced(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir), min_processes=2, max_processes=2)]})
    before = poll_until(lambda: len(pids(s, "a")) == 2 and pids(s, "a"), what="2 workers")
    with Load(s.port, "/", conns=1) as load:
        load.wait_for(100)
        for victim in before:  # each in turn, while the client loops
            os.kill(victim, signal.SIGKILL)
            poll_until(lambda: (p := pids(s, "a")) and len(p) == 2 and victim not in p, timeout=20,
                       what=f"a replacement for the killed worker {victim}")
            n = load.answered
            load.wait_for(n + 50)
    st = s.app_status("a")
    assert st["crashes"] == 2, st
    assert set(load.statuses) <= {200, 502}, load.summary()   # at most the request it was answering
    assert load.statuses[502] <= 2, load.summary()
    settled(s, "a", 2)


def test_a_worker_that_crashes_soon_after_ready_backs_off_until_failed(make_server, apps_dir):
    root = apps_dir / "flaky"
    root.mkdir()
    (root / "passenger_wsgi.py").write_text(
        "import os, sys, threading, time\n"
        "def _die():\n"
        "    time.sleep(1)\n"
        "    print('flaky: lost the database connection', file=sys.stderr, flush=True)\n"
        "    os._exit(4)\n"
        "threading.Thread(target=_die, daemon=True).start()\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'up\\n']\n")
    s = make_server({"environment": "development", "apps": [app_config("a", root, type="python-wsgi")]})
    st = poll_until(lambda: (a := s.app_status("a"))["state"] == "failed" and a, timeout=90,
                    what="the app marked failed after crashing soon after ready")
    assert st["failed_starts"] == 5 and st["crashes"] == 5 and st["spawns"] == 5, st
    assert "became ready (exit status 4)" in st["last_error"] and "min_uptime (5 s)" in st["last_error"]
    status, _, body = s.get("/")
    page = body.decode()
    assert status == 503 and "min_uptime" in page and "lost the database connection" in page
    # after the fix and a restart it serves
    (root / "passenger_wsgi.py").write_text("def application(environ, start_response):\n"
                                            "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
                                            "    return [b'fixed\\n']\n")
    r = s.cli("restart", "a")
    assert r.returncode == 0, r.stderr
    assert s.get("/")[2] == b"fixed\n"
    settled(s, "a", 1)


def test_a_drain_ends_at_shutdown_timeout_and_the_next_restart_gets_its_slot(make_server, apps_dir):
    s = make_server({"max_pool_size": 2, "shutdown_timeout": 2,
                     "apps": [app_config("a", copy_app("wsgi_echo", apps_dir), min_processes=2, max_processes=2)]})
    poll_until(lambda: len(pids(s, "a")) == 2, what="2 workers")
    result = {}

    def slow():
        try:
            result["r"] = s.get("/slow?t=30", timeout=60)[0]
        except Exception as e:  # noqa: BLE001 - the connection may be cut: that is the point
            result["r"] = e
    t = threading.Thread(target=slow)
    t.start()
    poll_until(lambda: any(w["in_flight"] for w in s.app_status("a")["workers"]), what="request in flight")
    busy = next(w["pid"] for w in s.app_status("a")["workers"] if w["in_flight"])
    t0 = time.monotonic()
    r = s.cli("restart", "a")
    assert r.returncode == 0, r.stderr
    r = s.cli("restart", "a")  # the old worker still drains: this restart waits for its slot
    assert r.returncode == 0, r.stderr + s.logs()[-2000:]
    t.join(30)
    assert time.monotonic() - t0 < 20, "the drain ended at shutdown_timeout, not with its 30 s request"
    assert busy not in [w["pid"] for w in s.app_status("a")["workers"]]
    assert "still in flight after shutdown_timeout (2 s) of draining" in s.logs()
    assert "in place" not in s.logs()  # the restart waited for the slot the drain freed
    st = settled(s, "a", 2)
    assert s.status()["workers"] == 2 and st["restarts"] == 2


def test_a_restart_with_no_slot_beside_its_workers_replaces_them_in_place_and_says_so(make_server, apps_dir):
    """Another app's worker drains for its own (long) shutdown_timeout and holds the surge slot."""
    root = copy_app("wsgi_echo", apps_dir)
    s = make_server({"max_pool_size": 2, "shutdown_timeout": 1, "apps": [
        app_config("a", root), app_config("b", root, path="/b", shutdown_timeout=30)]})
    def busy():
        try:
            s.get("/b/slow?t=20", timeout=60)
        except OSError:  # cut when the server stops: that is not what this test is about
            pass
    threading.Thread(target=busy, daemon=True).start()
    poll_until(lambda: s.app_status("b")["workers"][0]["in_flight"], what="b busy")
    assert s.cli("restart", "b").returncode == 0  # its old worker drains with the request: 3 of 2 workers
    assert [w["state"] for w in s.app_status("b")["workers"]] == ["draining", "ready"]
    before = pids(s, "a")
    status, data = s.control("POST", "/restart/a")
    assert status == 200 and data["ok"], data
    assert "1 replaced in place" in data["result"], data
    assert pids(s, "a") and not set(pids(s, "a")) & set(before)
    assert "replacing it in place" in s.logs()
    assert s.status()["workers"] <= 3
    settled(s, "a", 1)


def test_restart_with_a_full_pool_while_the_app_scales_under_load(make_server, apps_dir):
    s = make_server({"max_pool_size": 3, "apps": [app_config("a", copy_app("wsgi_echo", apps_dir), min_processes=1,
                                                                max_processes=3)]})
    with Load(s.port, "/slow?t=0.2", conns=8) as load:
        poll_until(lambda: len(pids(s, "a")) == 3, what="the app scaled to the full pool")
        before = set(pids(s, "a"))
        r = s.cli("restart", "a")
        assert r.returncode == 0, r.stderr + s.logs()[-2000:]
        left = set(pids(s, "a")) & before
        assert not left, f"half restarted: old workers {left} still take requests"
        n = load.answered
        load.wait_for(n + 20)
    assert load.errors == [] and set(load.statuses) == {200}, load.summary()
    assert s.status()["workers"] <= 3
    assert "restart done" in s.logs()


def test_a_graceful_stop_logs_and_counts_its_last_requests_and_health_says_draining(tmp_path, apps_dir):
    import http.client
    import json

    mport = free_port()
    log = tmp_path / "access.log"
    s = Server(tmp_path / "s", {"shutdown_timeout": 10, "access_log": str(log), "metrics_listen": f"127.0.0.1:{mport}",
                                "apps": [app_config("a", copy_app("wsgi_echo", apps_dir))]})
    s.start()
    result = {}
    t = threading.Thread(target=lambda: result.update(r=s.get("/slow?t=2")))
    t.start()
    poll_until(lambda: s.app_status("a")["workers"][0]["in_flight"] == 1, what="request in flight")
    s.proc.send_signal(signal.SIGTERM)

    def health():
        c = http.client.HTTPConnection("127.0.0.1", mport, timeout=5)
        try:
            c.request("GET", "/health")
            r = c.getresponse()
            return r.status, json.loads(r.read())
        finally:
            c.close()
    status, body = poll_until(lambda: (h := health())[1]["status"] == "draining" and h, timeout=5,
                              what="/health says draining")
    assert status == 503
    assert s.status()["draining"] is True
    t.join()
    assert result["r"][0] == 200
    assert s.stop() == 0
    lines = [x for x in log.read_text().splitlines() if "/slow?t=2" in x]
    assert len(lines) == 1 and '" 200 ' in lines[0], log.read_text()
