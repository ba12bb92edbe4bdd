"""Issue 12 item 5: the log lines users need, and none they do not. Real apps (Starlette under
uvicorn, Flask, a WSGI app that crashes at boot), the real CLI, reading its log."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from harness import app_config, copy_app

from passenger_lite.spawners.base import loader_path

STARLETTE = '''
import contextlib
import logging

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

log = logging.getLogger("shop")


@contextlib.asynccontextmanager
async def lifespan(app):
    log.info("warming the cache")
    yield
    log.info("cache flushed")


async def index(request):
    log.info("handled index")
    return PlainTextResponse("hi\\n")


app = Starlette(routes=[Route("/", index)], lifespan=lifespan)
'''

FLASK = '''
from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    app.logger.info("flask says hi")
    return "ok\\n"


@app.route("/boom")
def boom():
    raise RuntimeError("the database is down")
'''


def wait_for(pred, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened within {timeout} s: {what}")


def test_asgi_apps_info_logs_and_uvicorns_lifespan_lines_show_without_access_lines(make_server, apps_dir):
    root = apps_dir / "shop"
    root.mkdir()
    (root / "asgi.py").write_text(STARLETTE)
    s = make_server({"apps": [app_config("shop", root, python=sys.executable)]})
    assert s.get("/")[2] == b"hi\n"
    logs = wait_for(lambda: (lambda t: t if "handled index" in t else None)(s.logs()), "the app's INFO line")
    assert "INFO:shop: warming the cache" in logs
    assert "Application startup complete." in logs  # uvicorn's lifespan line
    assert "HTTP/1.1\" 200" not in logs and "GET / " not in logs  # no access lines
    s.stop()
    logs = s.logs()
    assert "INFO:shop: cache flushed" in logs and "Application shutdown complete." in logs


def test_a_flask_apps_own_logger_line_shows_once(make_server, apps_dir):
    root = apps_dir / "f"
    root.mkdir()
    (root / "wsgi.py").write_text(FLASK)
    s = make_server({"apps": [app_config("f", root, python=sys.executable)]})
    assert s.get("/")[0] == 200
    wait_for(lambda: "flask says hi" in s.logs(), "Flask's INFO line")
    time.sleep(0.2)  # a second copy would come from the same write
    assert s.logs().count("flask says hi") == 1


def test_every_5xx_is_logged_with_its_request_id(make_server, apps_dir):
    root = apps_dir / "f"
    root.mkdir()
    (root / "wsgi.py").write_text(FLASK)
    crash = copy_app("boot_crash", apps_dir)
    s = make_server({"apps": [app_config("f", root, python=sys.executable),
                              app_config("crashy", crash, path="/crashy", python=sys.executable)]})
    assert "access_log" not in s.config.read_text()
    rid = "req-boom-1234"  # the app's own 500 page is the app's: the id is the one the request came with
    status, headers, _ = s.get("/boom", headers={"X-Request-Id": rid})
    assert status == 500
    line = wait_for(lambda: next((x for x in s.logs().splitlines() if rid in x), None), "a line with the request id")
    assert "f GET /boom -> 500" in line and "f#1" in line
    status, headers, body = s.get("/crashy/")  # our error page: the app cannot start
    assert status == 503
    rid = headers["x-request-id"]
    assert rid.encode() in body
    line = wait_for(lambda: next((x for x in s.logs().splitlines() if rid in x), None), "a line with the request id")
    assert "crashy GET /crashy/ -> 503" in line
    assert s.get("/")[0] == 200  # and the next request is served at once
    st = s.app_status("f")
    assert st["queue"] == 0 and [w["in_flight"] for w in st["workers"]] == [0]


def test_spawn_lines_are_short_and_a_clean_stop_says_stopped(make_server, apps_dir):
    root = copy_app("wsgi_echo", apps_dir)
    s = make_server({"apps": [app_config("echo", root, python=sys.executable)]})
    assert s.get("/")[0] == 200
    pid = s.app_status("echo")["workers"][0]["pid"]
    s.stop()
    logs = s.logs()
    assert f"echo: spawning worker #1: {sys.executable} <passenger-lite>/loaders/wsgi_loader.py" in logs
    assert str(Path(loader_path("wsgi_loader.py")).parent) not in logs
    assert re.search(rf"echo: worker #1 \(pid {pid}\) stopped$", logs, re.M), logs
    assert "stopped (signal SIGTERM)" not in logs and "stopped (exit status 0)" not in logs


def test_a_boot_traceback_is_printed_once_then_one_line_per_retry_until_it_changes(make_server, apps_dir):
    root = copy_app("boot_crash", apps_dir)
    s = make_server({"apps": [app_config("crashy", root, python=sys.executable)]})
    wait_for(lambda: s.app_status("crashy")["failed_starts"] >= 3, "three failed starts")
    logs = s.logs()
    assert logs.count("RuntimeError: boom at boot: DATABASE_URL is not set") == 1, logs
    assert logs.count("Traceback (most recent call last)") == 1
    same = re.findall(r"crashy: worker failed to start: the worker exited during start \(exit status 3\); "
                      r"the same (\d+) line\(s\) of output as the last failed start \(not shown again\)", logs)
    assert len(same) >= 2 and int(same[0]) >= 3
    # the app fails differently now: that is printed in full, once
    (root / "passenger_wsgi.py").write_text('import sys\nprint("loading", file=sys.stderr)\n'
                                            'raise KeyError("SECRET_KEY")\n')
    wait_for(lambda: "KeyError: 'SECRET_KEY'" in s.logs(), "the new traceback", timeout=40)
    n = s.app_status("crashy")["failed_starts"]
    wait_for(lambda: s.app_status("crashy")["failed_starts"] > n or s.app_status("crashy")["state"] == "failed",
             "one more failed start, or the app marked failed", timeout=40)
    assert s.logs().count("KeyError: 'SECRET_KEY'") == 1
