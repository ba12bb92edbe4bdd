"""Issue 6 item 5 (and issue 4 item 5): restarts on source changes in dev mode, and on tmp/restart.txt."""
import os
import re

import yaml

from harness import app_config, copy_app
from rawhttp import poll_until

APP = '''def application(environ, start_response):
    body = b"{text}\\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def write_app(root, text: str) -> None:
    path = root / "passenger_wsgi.py"
    tmp = root / ".passenger_wsgi.py.new"  # write-then-rename, as editors do
    tmp.write_text(APP.format(text=text))
    os.replace(tmp, path)


def body_is(s, text: str):
    return lambda: s.get("/")[2] == f"{text}\n".encode()


def restarted(s, n: int):
    """A condition: the app `dev` has had n restarts and they are over (two ready workers, nothing else)."""
    def done():
        a = s.app_status("dev")
        over = a["restarts"] == n and len(a["workers"]) == 2 and all(w["state"] == "ready" for w in a["workers"])
        return a if over else None
    return done


def test_a_source_edit_restarts_the_app_and_a_broken_one_shows_the_error_until_fixed(make_server, apps_dir):
    root = apps_dir / "dev"
    root.mkdir()
    write_app(root, "version one")
    s = make_server({"apps": [app_config("dev", root, min_processes=2)]}, args=("--dev",))
    assert s.get("/")[2] == b"version one\n"
    assert "dev: watching" in s.logs()
    pids = {w["pid"] for w in s.app_status("dev")["workers"]}

    write_app(root, "version two")
    poll_until(body_is(s, "version two"), what="the new code answers")
    app = poll_until(restarted(s, 1), what="the restart is complete")
    assert app["last_restart"]["reason"] == "passenger_wsgi.py changed"
    assert not pids & {w["pid"] for w in app["workers"]}  # every worker was replaced
    assert re.search(r"dev: passenger_wsgi\.py changed( \(and 1 more\))?; restarting its workers", s.logs())

    # changes under ignored paths alone restart nothing; the next real change is named in the log
    for rel in ("tmp/cache.txt", "log/dev.log", "__pycache__/x.cpython-311.pyc", "node_modules/m/index.js",
                ".git/HEAD", "notes.pyc", "server.log"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "settings.py").write_text("DEBUG = True\n")
    poll_until(restarted(s, 2), what="a restart for settings.py")
    changed = re.findall(r"dev: (\S+) changed(?: \(and (\d+) more\))?; restarting", s.logs())
    assert changed[-1] == ("settings.py", ""), changed  # named alone: nothing ignored came with it
    assert s.app_status("dev")["last_restart"]["reason"] == "settings.py changed"

    # a syntax error: the new workers cannot boot, so the old ones go and the error page shows
    (root / "passenger_wsgi.py").write_text("def application(environ, start_response:\n")
    _, _, page = poll_until(lambda: (lambda r: r if r[0] == 503 else None)(s.get("/")), what="the error page")
    assert b"SyntaxError" in page and b"passenger_wsgi.py" in page  # development: the details are shown
    write_app(root, "version three")
    poll_until(body_is(s, "version three"), what="the fixed code answers")


def test_apps_watch_only_with_dev_or_watch_true(make_server, apps_dir):
    a, b = apps_dir / "a", apps_dir / "b"
    for root in (a, b):
        root.mkdir()
        write_app(root, f"app {root.name}")
    s = make_server({"environment": "development",
                     "apps": [app_config("a", a, watch=True), app_config("b", b, path="/b")]})
    assert "a: watching" in s.logs() and "b: watching" not in s.logs()
    write_app(a, "app a v2")
    poll_until(body_is(s, "app a v2"), what="a restarted")
    # b is not watched; its restart.txt still works (every mode)
    write_app(b, "app b v2")
    (b / "tmp").mkdir()
    (b / "tmp" / "restart.txt").write_text("")
    poll_until(lambda: s.get("/b/")[2] == b"app b v2\n", what="b restarted through restart.txt")
    assert s.app_status("b")["restarts"] == 1  # the edit itself did not restart it
    assert s.app_status("b")["last_restart"]["reason"] == "tmp/restart.txt touched"


def test_touching_restart_txt_restarts_in_production_and_keeps_old_workers_if_the_new_fail(make_server, apps_dir):
    root = copy_app("ops_app", apps_dir)
    (root / "tmp").mkdir()
    (root / "tmp" / "restart.txt").write_text("")  # there at start: only a change counts
    s = make_server({"apps": [app_config("ops", root)]})
    pid = s.get("/pid")[2]
    os.utime(root / "tmp" / "restart.txt", (1, 1))
    poll_until(lambda: s.get("/pid")[2] != pid, what="a new worker")
    app = s.app_status("ops")
    assert app["restarts"] == 1 and app["last_restart"]["reason"] == "tmp/restart.txt touched"
    assert "ops: tmp/restart.txt touched; restarting its workers" in s.logs()
    pid = s.get("/pid")[2]
    # production: broken new code does not take the old workers down
    (root / "passenger_wsgi.py").write_text("raise RuntimeError('broken deploy')\n")
    os.utime(root / "tmp" / "restart.txt", (2, 2))
    poll_until(lambda: "ops: restart failed" in s.logs(), what="the failed restart is logged")
    assert s.get("/pid")[2] == pid


def test_a_reload_adds_the_watch_of_a_new_app(make_server, apps_dir):
    a, b = apps_dir / "a", apps_dir / "b"
    for root in (a, b):
        root.mkdir()
        write_app(root, f"app {root.name}")
    s = make_server({"apps": [app_config("a", a)]}, args=("--dev",))
    cfg = yaml.safe_load(s.config.read_text())
    cfg["apps"].append(app_config("b", b, path="/b"))
    s.config.write_text(yaml.safe_dump(cfg))
    assert s.cli("reload").returncode == 0
    poll_until(lambda: "b: watching" in s.logs(), what="b is watched")
    write_app(b, "app b v2")
    poll_until(lambda: s.get("/b/")[2] == b"app b v2\n", what="b restarted")


def test_a_folder_created_after_start_is_watched_too(make_server, apps_dir):
    root = apps_dir / "dev"
    root.mkdir()
    write_app(root, "v1")
    s = make_server({"apps": [app_config("dev", root)]}, args=("--dev",))
    (root / "lib").mkdir()  # a new top-level folder: a restart, and a watch inside it
    poll_until(lambda: s.app_status("dev")["restarts"] == 1, what="a restart for lib/")
    poll_until(lambda: [w["state"] for w in s.app_status("dev")["workers"]] == ["ready"], what="the restart over")
    (root / "lib" / "helpers.py").write_text("X = 1\n")
    poll_until(lambda: s.app_status("dev")["restarts"] == 2, what="a restart for lib/helpers.py")
    assert s.app_status("dev")["last_restart"]["reason"] == "lib/helpers.py changed"
