"""Issue 4: crash recovery, error pages, scale to zero, recycling, zero-downtime restart, reload, stop."""
import os
import signal
import threading
import time

import psutil
import pytest
import yaml

from harness import Server, alive, app_config, copy_app
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
