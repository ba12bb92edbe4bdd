"""Issue 6: formatting and small decisions of status, access log, metrics, watcher, display, smoke."""
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

from passenger_lite.manager import accesslog, metrics, watch
from passenger_lite.manager.config import AppConfig, SmokeRequest
from passenger_lite.manager.bootscreen import LiveBlock, _clip, app_urls
from passenger_lite.manager.output import Printer
from passenger_lite.manager.smoke import Result, check, junit_xml, render_table, request_host
from passenger_lite.manager.statusview import duration, render_status

NOW = 1_700_000_000.0

STATUS = {
    "pid": 4242, "config": "/srv/sites.yaml", "environment": "production", "started_at": NOW - 303,
    "uptime_s": 303.0, "listen": ["http://127.0.0.1:8080"], "max_pool_size": 6, "workers": 2,
    "apps": [
        {"name": "blog", "type": "python-wsgi", "state": "running", "hosts": ["blog.test", "www.blog.test"],
         "path": "/", "root": "/srv/blog", "concurrency": 1, "min_processes": 1, "max_processes": 4, "queue": 3,
         "requests": 1234, "spawns": 3, "crashes": 1, "failed_starts": 0, "restarts": 1,
         "last_restart": {"reason": "restart command", "at": NOW - 123}, "last_error": None,
         "workers": [
             {"id": 3, "pid": 4250, "state": "ready", "in_flight": 1, "requests": 600, "uptime_s": 121.0,
              "idle_s": 0.0, "rss_bytes": 31 * 1048576, "stop_reason": None},
             {"id": 1, "pid": 4244, "state": "draining", "in_flight": 1, "requests": 634, "uptime_s": 3700.0,
              "idle_s": 0.0, "rss_bytes": 30 * 1048576, "stop_reason": "restart (restart command)"}]},
        {"name": "lazy", "type": "node", "state": "idle", "hosts": [], "path": "/lazy", "root": "/srv/lazy",
         "concurrency": 0, "min_processes": 0, "max_processes": 2, "queue": 0, "requests": 0, "spawns": 0,
         "crashes": 0, "failed_starts": 0, "restarts": 0, "last_restart": None, "last_error": None, "workers": []},
    ],
}


def test_status_table_reads_like_passenger_status_but_clearer():
    text = render_status(STATUS, now=NOW)
    lines = text.splitlines()
    assert lines[0] == "passenger-lite  pid 4242 · up 5m03s · production · 2 of 6 workers"
    assert lines[1:3] == ["config  /srv/sites.yaml", "listen  http://127.0.0.1:8080"]
    assert ("blog  running · python-wsgi · blog.test/, www.blog.test/ · queue 3 · 1234 requests · "
            "3 spawns, 1 crash, 1 restart") in lines
    assert re.search(r"^  last restart \d\d:\d\d:\d\d \(2m03s ago\): restart command$", text, re.M)
    header = next(ln for ln in lines if ln.strip().startswith("#"))
    assert header.split() == ["#", "PID", "STATE", "IN-FLIGHT", "REQUESTS", "UPTIME", "RSS", "NOTE"]
    rows = [ln.split(None, 7) for ln in lines if re.match(r"^  \d ", ln)]
    assert rows == [["3", "4250", "ready", "1", "600", "2m01s", "31", "MiB"],
                    ["1", "4244", "draining", "1", "634", "1h01m", "30", "MiB  restart (restart command)"]]
    # columns line up: each value starts under its header
    for ln in lines:
        if re.match(r"^  \d ", ln):
            assert ln.index("ready" if "ready" in ln else "draining") == header.index("STATE")
    assert "lazy  idle · node · */lazy · queue 0 · 0 requests · 0 spawns, 0 crashes, 0 restarts" in lines
    assert "  no workers (min_processes 0: one starts on the next request)" in lines


def test_durations():
    assert [duration(x) for x in (0, 59, 60, 3599, 3600, 86399, 90000)] == \
        ["0s", "59s", "1m00s", "59m59s", "1h00m", "23h59m", "1d01h"]


def _exchange(**kw):
    worker = SimpleNamespace(id=2, pid=4242)
    ex = SimpleNamespace(client=SimpleNamespace(peer_ip="10.0.0.9"), method="GET", target='/a b"c?x=1',
                         http_version=(1, 0), host_header="blog.test",
                         resp_bytes=5120, app_name="blog", last_worker=worker, t0=100.0, t_worker=100.25,
                         request_id="abc-1")
    ex.__dict__.update(kw)
    return ex


def test_access_log_text_line():
    line = accesslog.format_text(_exchange(), 200, False, end=101.0, wall=0.0)
    assert line == ('10.0.0.9 - - [01/Jan/1970:00:00:00 +0000] "GET /a b\\"c?x=1 HTTP/1.0" 200 5120 "blog.test" '
                    'app=blog worker=2 pid=4242 total_ms=1000.0 queue_ms=250.0 upstream_ms=750.0 rid=abc-1\n')
    assert accesslog.format_text(_exchange(), 502, True, end=101.0, wall=0.0).endswith(" rid=abc-1 aborted\n")


def test_access_log_json_line():
    j = json.loads(accesslog.format_json(_exchange(), 200, False, end=101.0, wall=12.5))
    assert j == {"time": 12.5, "client": "10.0.0.9", "method": "GET", "target": '/a b"c?x=1', "protocol": "HTTP/1.0",
                 "host": "blog.test", "status": 200, "bytes": 5120, "app": "blog", "worker": 2, "pid": 4242,
                 "total_ms": 1000.0, "queue_ms": 250.0, "upstream_ms": 750.0, "request_id": "abc-1", "aborted": False}


def test_access_log_for_a_request_that_never_got_a_worker():
    ex = _exchange(last_worker=None, t_worker=0.0, request_id="")
    line = accesslog.format_text(ex, 504, False, end=130.0, wall=0.0)
    assert "worker=- pid=- total_ms=30000.0 queue_ms=30000.0 upstream_ms=- rid=-\n" in line
    j = json.loads(accesslog.format_json(ex, 504, True, end=130.0, wall=0.0))
    assert j["queue_ms"] == 30000.0 and j["upstream_ms"] is None and j["worker"] is None and j["aborted"] is True
    assert json.loads(accesslog.format_early(400, 1.0, True)) == {"time": 1.0, "status": 400, "app": None}
    assert accesslog.format_early(400, 0.0, False).startswith('- - - [01/Jan/1970:00:00:00 +0000] "-" 400 0')


def test_metrics_buckets_and_code_classes():
    counts = [0] * (len(metrics.DURATION_BUCKETS) + 1)
    for d in (0.001, 0.005, 0.0051, 0.3, 99.0):
        counts[metrics.bisect_left(metrics.DURATION_BUCKETS, d)] += 1
    cum = dict(metrics.cumulative(counts, metrics.DURATION_BUCKETS))
    assert cum["0.005"] == 2  # le: 0.005 itself is in the first bucket
    assert cum["0.01"] == 3 and cum["0.25"] == 3 and cum["0.5"] == 4 and cum["60.0"] == 4 and cum["+Inf"] == 5
    assert [metrics.code_class(s) for s in (101, 200, 302, 404, 499, 503, 600, 42)] == [0, 1, 2, 3, 3, 4, 4, 4]


def test_health_of_an_app():
    from passenger_lite.manager.states import AppState

    from passenger_lite.manager.pool import AppPool

    def pool(**kw):  # the fields AppPool.boot_state reads, and boot_state itself
        p = SimpleNamespace(**kw)
        p.boot_state = lambda: AppPool.boot_state(p)
        return p

    failure = SimpleNamespace(message="the worker exited during start (exit status 1)")
    ready = pool(ready=[object()], min=1, state=AppState.RUNNING, last_failure=None)
    idle = pool(ready=[], min=0, state=AppState.IDLE, last_failure=None)
    idle_but_needed = pool(ready=[], min=1, state=AppState.IDLE, last_failure=None)
    failed = pool(ready=[], min=1, state=AppState.BACKOFF, last_failure=failure)
    assert metrics.app_health(ready)[0] and metrics.app_health(idle)[0]
    assert not metrics.app_health(idle_but_needed)[0]
    assert metrics.app_health(failed) == (False, "backoff: the worker exited during start (exit status 1)")


def test_watch_ignores_what_must_not_restart_an_app():
    for rel in (".git/index", "node_modules/x/y.js", "pkg/__pycache__/m.cpython-311.pyc", "m.pyc", "tmp/restart.txt",
                "log/production.log", "app/.views.py.swp", "notes~", ".#draft", ".venv/bin/python", "debug.log"):
        assert watch.ignored(rel), rel
    for rel in ("app.py", "config.ru", "lib/tmp/x.rb", "src/log/handler.js", "templates/index.html",
                ".env", "Gemfile.lock"):
        assert not watch.ignored(rel), rel


def test_watch_names_the_file_that_exists_first(tmp_path):
    (tmp_path / "app.py").write_text("")
    assert watch.trigger_order({".app.py.new", "app.py", "zzz.py"}, tmp_path)[0] == "app.py"


def test_which_apps_are_watched():
    def site(*apps):
        return SimpleNamespace(apps=[SimpleNamespace(name=n, root=f"/r/{n}", watch=w) for n, w in apps])
    s = site(("a", None), ("b", True), ("c", False))
    assert watch.watched_apps(s, dev=True) == {"a": "/r/a", "b": "/r/b"}
    assert watch.watched_apps(s, dev=False) == {"b": "/r/b"}


def _app(**kw):
    return AppConfig.model_validate({"name": "blog", "root": "/srv/blog", **kw})


def test_app_urls_for_the_start_up_table():
    listeners = ["http://127.0.0.1:8080", "https://127.0.0.1:443", "unix:/run/pl.sock"]
    assert app_urls(_app(), listeners) == ["http://127.0.0.1:8080/", "https://127.0.0.1/", "unix:/run/pl.sock /"]
    assert app_urls(_app(hosts=["blog.test", "*.blog.test"], path="/b"), listeners[:1]) == \
        ["http://blog.test:8080/b", "http://*.blog.test:8080/b"]


def test_live_block_keeps_its_lines_below_whole_log_lines():
    term = io.StringIO()
    block = LiveBlock(term)
    block.show(["  booting a", "  booting b"])
    block.write("half ")            # nothing until the line is whole
    assert term.getvalue() == "  booting a\n  booting b\n"
    block.write("line\n")
    assert term.getvalue().endswith("\x1b[2A\r\x1b[Jhalf line\n  booting a\n  booting b\n")
    block.show([])
    assert term.getvalue().endswith("\x1b[2A\r\x1b[J")
    assert _clip("\x1b[32m✓\x1b[0m abcdef", 4) == "\x1b[32m✓\x1b[0m ab\x1b[0m"  # 4 visible characters


def test_printer_colours_each_app_on_a_terminal_only():
    w1 = SimpleNamespace(app="blog", id=1, pid=10)
    w2 = SimpleNamespace(app="shop", id=1, pid=11)
    out = io.StringIO()
    p = Printer(out, colour=True)
    p.worker_line(w1, "one", "out")
    p.worker_line(w2, "two", "err")
    p.worker_line(w1, "three", "out")
    a, b, c = out.getvalue().splitlines()
    colour = re.compile(r"\x1b\[(\d+)m")
    assert colour.findall(a)[0] == colour.findall(c)[0] != colour.findall(b)[0]
    plain = io.StringIO()
    Printer(plain, colour=False).worker_line(w1, "one", "out")
    assert re.fullmatch(r"\d\d:\d\d:\d\d blog\.1\[10\] +\| one\n", plain.getvalue())
    js = io.StringIO()
    Printer(js, fmt="json").worker_line(w2, "two", "err")
    assert json.loads(js.getvalue()) | {"time": 0} == {"time": 0, "app": "shop", "worker": 1, "pid": 11,
                                                        "stream": "err", "line": "two"}


def test_smoke_checks_and_hosts():
    assert check(SmokeRequest(), 404, b"") == ""
    assert check(SmokeRequest(), 502, b"") == "status 502 (expected below 500)"
    assert check(SmokeRequest(status=201), 200, b"") == "expected status 201, got 200"
    assert check(SmokeRequest(contains="héllo"), 200, "say héllo".encode()) == ""
    assert check(SmokeRequest(contains="bye"), 200, b"hello") == "the body does not contain 'bye'"
    assert request_host(_app(hosts=["*.shop.test"]), SmokeRequest()) == "smoke.shop.test"
    assert request_host(_app(hosts=["a.test"]), SmokeRequest(host="b.test")) == "b.test"
    assert request_host(_app(), SmokeRequest()) == "localhost"


def test_smoke_table_and_junit_xml_a_parser_reads():
    results = [Result("blog", "boot", seconds=0.8, ok=True, message="ok"),
               Result("blog", "GET blog.test/", 200, 0.012, True, "ok"),
               Result("shop", "boot", seconds=1.5, message="failed: the worker exited during start (exit status 1)",
                      tail=["Traceback (most recent call last):", "RuntimeError: <boom> & \"bang\""]),
               Result("shop", "GET /shop", message="skipped: the app did not boot", skipped=True)]
    table = render_table(results)
    assert table.splitlines()[0].split() == ["APP", "REQUEST", "STATUS", "TIME", "RESULT"]
    assert re.search(r"^blog +GET blog.test/ +200 +12 ms +PASS$", table, re.M)
    assert re.search(r"^shop +boot +- +1500 ms +FAIL  failed: the worker exited", table, re.M)
    assert "    | RuntimeError: <boom> & \"bang\"" in table
    assert table.splitlines()[-1] == "2 passed, 1 failed, 1 skipped"
    root = ET.fromstring(junit_xml(results, 2.5))
    assert (root.tag, root.get("tests"), root.get("failures"), root.get("skipped")) == ("testsuites", "4", "1", "1")
    shop = root.find("testsuite[@name='shop']")
    fail = shop.find("testcase[@name='boot']/failure")
    assert fail.get("message").startswith("failed: the worker exited") and 'RuntimeError: <boom> & "bang"' in fail.text
    assert shop.find("testcase[@name='GET /shop']/skipped") is not None
    assert root.find("testsuite[@name='blog']").get("failures") == "0"


def test_readme_documents_the_status_json_fields():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### `status --json`"):]
    for key in ("pid", "uptime_s", "listen", "max_pool_size", "workers", "apps", "state", "hosts", "path", "queue",
                "requests", "spawns", "crashes", "restarts", "last_restart", "last_error", "in_flight", "uptime_s",
                "rss_bytes", "stop_reason"):
        assert f"`{key}`" in section, key
