"""Issue 6: control-socket commands, `status`, worker output, access log, log_file, start-up display."""
import json
import os
import pty
import re
import select
import signal
import shutil
import socket
import subprocess
import threading
import time

import psutil
import yaml

from harness import Server, app_config, cli_command, copy_app, elsewhere, run_cli
from rawhttp import poll_until


def ready_workers(s, app: str) -> int:
    return sum(w["state"] == "ready" for w in s.app_status(app)["workers"])


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    return t, out


# ---------------------------------------------------------------------------- control socket


def test_every_control_command_says_in_one_line_that_no_manager_runs(tmp_path, apps_dir):
    cfg = tmp_path / "sites.yaml"
    cfg.write_text(f"apps:\n  - name: ops\n    root: {copy_app('ops_app', apps_dir)}\n")
    commands = [("status",), ("status", "--json"), ("restart", "ops"), ("reload",), ("stop",)]

    def check_all():
        for cmd in commands:
            r = run_cli(*cmd, "--config", str(cfg))
            assert r.returncode == 1, (cmd, r)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "no passenger-lite is running for" in lines[0], (cmd, r.stderr)
            assert str(cfg) in lines[0] and r.stdout == ""

    check_all()
    # a socket left by a manager that was killed: nobody answers on it, same answer
    from passenger_lite.manager.runtimedir import control_socket

    path = control_socket(cfg)
    path.parent.mkdir(mode=0o700)  # control_socket() no longer makes the folder (issue 11)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    try:
        check_all()
    finally:  # any start (another test's, another checkout's) may have removed it as a dead run's
        path.unlink(missing_ok=True)
        shutil.rmtree(path.parent, ignore_errors=True)


def test_restart_reload_and_stop_through_the_cli(make_server, apps_dir):
    ops = copy_app("ops_app", apps_dir)
    s = make_server({"apps": [app_config("ops", ops)]})
    pid = s.get("/pid")[2]

    r = s.cli("restart", "ops")
    assert r.returncode == 0 and r.stdout.strip() == "ops: restarted", r
    assert s.get("/pid")[2] != pid
    lr = s.app_status("ops")["last_restart"]
    assert lr["reason"] == "restart command" and lr["at"] > time.time() - 60

    r = s.cli("restart", "nope")
    assert r.returncode == 2 and "no app named 'nope'" in r.stderr and "ops" in r.stderr, r

    cfg = yaml.safe_load(s.config.read_text())
    cfg["apps"].append(app_config("second", ops, path="/second"))
    s.config.write_text(yaml.safe_dump(cfg))
    r = s.cli("reload")
    assert r.returncode == 0 and "added second" in r.stdout, r
    poll_until(lambda: s.get("/second/")[2] == b"hello from ops_app\n", what="the added app answers")

    workers = [w["pid"] for a in s.status()["apps"] for w in a["workers"]]
    r = s.cli("stop")  # returns once the manager has stopped its workers
    assert r.returncode == 0 and r.stdout == "stopping…\nstopped\n", r
    assert not [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert s.proc.wait(40) == 0
    s.stop()  # checks that no process is left
    r = s.cli("status")
    assert r.returncode == 1 and "no passenger-lite is running" in r.stderr


# ---------------------------------------------------------------------------- status


def test_status_numbers_match_the_requests_sent(make_server, apps_dir, tmp_path):
    ops = copy_app("ops_app", apps_dir)
    s = make_server({"apps": [app_config("ops", ops, min_processes=2, max_processes=2, concurrency=1)]})
    poll_until(lambda: ready_workers(s, "ops") == 2, what="two ready workers")
    served: dict[int, int] = {}
    for _ in range(9):
        pid = int(s.get("/pid")[2])
        served[pid] = served.get(pid, 0) + 1
    s.get("/status?code=404")  # an app's own 404 is a request it served
    r = s.cli("status", "--json")
    assert r.returncode == 0, r
    data = json.loads(r.stdout)
    app = next(a for a in data["apps"] if a["name"] == "ops")
    assert app["requests"] == 10 and app["queue"] == 0 and app["state"] == "running"
    assert app["hosts"] == [] and app["path"] == "/" and app["type"] == "python-wsgi"
    by_pid = {w["pid"]: w for w in app["workers"]}
    assert set(by_pid) >= set(served)
    assert sum(w["requests"] for w in app["workers"]) == 10
    for pid, n in served.items():
        assert by_pid[pid]["requests"] in (n, n + 1)  # + the 404 on one of them
    for w in app["workers"]:
        assert w["state"] == "ready" and w["in_flight"] == 0
        assert w["rss_bytes"] > 1_000_000 and w["uptime_s"] >= 0
    assert data["workers"] == 2 and data["pid"] == s.proc.pid and data["listen"] == [f"http://127.0.0.1:{s.port}"]

    # two requests held on the two workers, a third one waiting in the queue
    gate = tmp_path / "release"
    held = [in_thread(s.get, f"/hold?until={gate}") for _ in range(3)]
    def held_and_queued():
        a = s.app_status("ops")
        return a if a["queue"] == 1 and sum(w["in_flight"] for w in a["workers"]) == 2 else None

    st = poll_until(held_and_queued, what="2 in flight and 1 queued")
    assert sorted(w["in_flight"] for w in st["workers"]) == [1, 1]
    human = s.cli("status").stdout
    assert "ops  running · python-wsgi · */ · queue 1 · 10 requests" in human, human
    for w in st["workers"]:
        assert re.search(rf"^\s+{w['id']}\s+{w['pid']}\s+ready\s+1\s+", human, re.M), human
    gate.write_text("go")
    for t, out in held:
        t.join(30)
        assert out and out[0][0] == 200
    app = s.app_status("ops")
    assert app["requests"] == 13 and app["queue"] == 0


# ---------------------------------------------------------------------------- logs


def test_worker_output_is_whole_prefixed_lines_even_when_two_workers_write_half_lines(make_server, apps_dir):
    ops = copy_app("ops_app", apps_dir)
    s = make_server({"apps": [app_config("ops", ops, min_processes=2, max_processes=2, concurrency=1)]})
    poll_until(lambda: ready_workers(s, "ops") == 2, what="two ready workers")
    threads = [in_thread(s.get, f"/halflines?tag={tag}&n=4") for tag in ("A", "B")]
    pids = {}
    for tag, (t, out) in zip(("A", "B"), threads):
        t.join(30)
        pids[tag] = int(out[0][2])
    assert pids["A"] != pids["B"]  # really two workers at once
    workers = {w["pid"]: w["id"] for w in s.app_status("ops")["workers"]}

    def complete():
        text = s.logs()
        return text if text.count("-end pid=") >= 16 else None

    text = poll_until(complete, what="16 worker lines in the log")
    lines = [ln for ln in text.splitlines() if "-begin" in ln or "-end" in ln]
    assert len(lines) == 16, lines
    for ln in lines:
        m = re.fullmatch(r"\d\d:\d\d:\d\d (ops\.(\d+)\[(\d+)\]) *\| ([AB])(\d)-begin \4\5-end pid=(\d+)", ln)
        assert m, f"not one whole prefixed line: {ln!r}"
        wid, pid, tag, line_pid = int(m.group(2)), int(m.group(3)), m.group(4), int(m.group(6))
        assert pid == line_pid == pids[tag] and workers[pid] == wid
    assert "\x1b[" not in text  # no colour off a terminal


def test_access_log_json_has_one_line_per_request_with_timings(make_server, apps_dir, tmp_path):
    ops = copy_app("ops_app", apps_dir)
    (tmp_path / "s0" / "logs").mkdir(parents=True)  # the first server's folder (make_server)
    s = make_server({"access_log": "logs/access.jsonl", "log_format": "json",
                     "apps": [app_config("ops", ops, path="/ops")]})
    st, h, body = s.get("/ops/pid", headers={"X-Request-Id": "rid-one"})
    s.get("/ops/status?code=404")
    s.get("/elsewhere")  # no app there: answered before routing
    path = s.dir / "logs" / "access.jsonl"
    lines = poll_until(lambda: path.exists() and len(path.read_text().splitlines()) >= 3 and
                 path.read_text().splitlines(), what="3 access log lines")
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 3
    a, b, c = recs
    assert a["app"] == "ops" and a["status"] == 200 and a["pid"] == int(body) and a["worker"] == 1
    assert a["method"] == "GET" and a["target"] == "/ops/pid" and a["bytes"] == len(body)
    assert a["request_id"] == "rid-one" and a["client"] == "127.0.0.1" and not a["aborted"]
    assert a["total_ms"] >= a["upstream_ms"] >= 0 and a["queue_ms"] >= 0
    assert a["total_ms"] >= a["queue_ms"]
    assert b["status"] == 404 and b["app"] == "ops" and b["request_id"] and b["request_id"] != "rid-one"
    assert c["status"] == 404 and c["app"] is None
    # the manager's own log is JSON too
    assert any(json.loads(x).get("message", "").startswith("ops: worker #1") for x in s.logs().splitlines()
               if x.startswith("{"))


def test_access_log_text_to_a_file_reopened_on_sigusr1(make_server, apps_dir):
    ops = copy_app("ops_app", apps_dir)
    s = make_server({"access_log": "access.log", "apps": [app_config("ops", ops)]})
    _, h, body = s.get("/pid", headers={"X-Request-Id": "rid-two"})
    path = s.dir / "access.log"
    line = poll_until(lambda: path.exists() and path.read_text(), what="an access log line")
    m = re.fullmatch(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /pid HTTP/1\.1" 200 (\d+) '
                     r'"127\.0\.0\.1:(\d+)" app=ops worker=1 pid=(\d+) total_ms=([\d.]+) queue_ms=([\d.]+) '
                     r'upstream_ms=([\d.]+) rid=(\S+)\n', line)
    assert m, line
    assert int(m.group(1)) == len(body) and int(m.group(3)) == int(body) and m.group(7) == "rid-two"
    assert float(m.group(4)) >= float(m.group(6))
    # logrotate: move the file away, SIGUSR1, and the next lines go to a new file
    path.rename(s.dir / "access.log.1")
    s.proc.send_signal(signal.SIGUSR1)
    poll_until(lambda: "log files reopened" in s.logs(), what="the reopen is logged")
    s.get("/status?code=201")
    assert " 201 " in poll_until(lambda: path.exists() and path.read_text(), what="a line in the new file")
    assert (s.dir / "access.log.1").read_text() == line


def test_log_file_gets_the_manager_log_and_the_worker_output(make_server, apps_dir):
    ops = copy_app("ops_app", apps_dir)
    s = make_server({"log_file": "manager.log", "apps": [app_config("ops", ops)]})
    s.get("/halflines?tag=Z&n=1")
    path = s.dir / "manager.log"
    text = poll_until(lambda: "Z0-end" in path.read_text() and path.read_text(), what="the worker's lines")
    assert re.search(r"passenger-lite \| ops: worker #1 \(pid \d+\) ready in \d+ ms", text), text
    assert re.search(r"ops\.1\[\d+\] *\| Z0-begin Z0-end", text), text
    s.stop()
    assert "stopped" in path.read_text().splitlines()[-1]
    assert "ready in" not in s.logs() and "Z0-begin" not in s.logs()  # nothing on stderr


# ---------------------------------------------------------------------------- start-up display


class TtyServer(Server):
    """A Server whose stdout and stderr are a pseudo-terminal (what a user at a shell sees)."""

    def start(self) -> None:
        master, slave = pty.openpty()
        env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="120")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cli_command() + ["start", "--config", str(self.config), *self.args],
                                     cwd=elsewhere(), stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.master = master
        self.screen = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_ready(self.ready_timeout)

    def _read(self) -> None:
        while True:
            r, _, _ = select.select([self.master], [], [], 0.2)
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                if not data:
                    return
                self.screen += data
            elif self.proc.poll() is not None:
                return

    def text(self) -> str:
        return self.screen.decode("utf-8", "replace")


def test_start_on_a_terminal_shows_apps_booting_then_a_table_of_urls(tmp_path, apps_dir):
    ops = copy_app("ops_app", apps_dir)
    crash = copy_app("boot_crash", apps_dir)
    s = TtyServer(tmp_path / "tty", {"apps": [app_config("ops", ops, hosts=["ops.test"], min_processes=2),
                                              app_config("crash", crash, path="/crash"),
                                              app_config("lazy", ops, path="/lazy", min_processes=0)]})
    try:
        s.start()
        text = poll_until(lambda: "Ctrl-C stops" in s.text() and s.text(), what="the start-up table")
        assert re.search(r"ops +starting… \d+\.\ds", text)  # live, with the elapsed time
        assert re.search(r"ops +ready in \d+\.\ds", text)
        plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
        table = plain[plain.index("passenger-lite is serving 3 apps"):]
        assert re.search(rf"ops +http://ops\.test:{s.port}/ +2/4 +ready", table), table
        assert re.search(rf"crash +http://127\.0\.0\.1:{s.port}/crash +0/4 +failed: the worker exited during start",
                         table), table
        assert re.search(rf"lazy +http://127\.0\.0\.1:{s.port}/lazy +0/4 +idle", table), table
        assert "\x1b[32m" in text  # coloured on a terminal, each app's worker prefix too
        assert re.search(r"\x1b\[\d+mcrash\.1\[\d+\] *\x1b\[0m \| boot_crash: loading settings", text)
        assert "boot_crash: loading settings" in plain  # the workers' output scrolls above the live block
    finally:
        s.stop()
        os.close(s.master)


def test_start_off_a_terminal_logs_plain_lines(make_server, apps_dir):
    s = make_server({"apps": [app_config("ops", copy_app("ops_app", apps_dir))]})
    poll_until(lambda: "serving 1 app(s) on http://127.0.0.1:" in s.logs(), what="the serving line")
    assert "\x1b[" not in s.logs() and "Ctrl-C stops" not in s.logs()


def test_a_restart_while_a_worker_boots_is_not_a_failed_start(make_server, apps_dir, tmp_path):
    """The worker the restart stops while it boots is replaced at once; the app is not marked as
    failing (no backoff, no error page blaming SIGTERM)."""
    root = apps_dir / "gated"
    root.mkdir()
    gate = tmp_path / "boot"
    (root / "passenger_wsgi.py").write_text(
        "import os, time\n"
        f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.01)\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '2')])\n    return [b'ok']\n")
    s = make_server({"apps": [app_config("gated", root)]}, wait=False)
    def booting():
        try:
            return [w for w in s.app_status("gated")["workers"] if w["state"] == "starting"]
        except OSError:  # the control socket is not there yet
            return None

    poll_until(booting, what="a worker booting")
    done, out = in_thread(s.cli, "restart", "gated")
    poll_until(lambda: [w["id"] for w in s.app_status("gated")["workers"]] == [2], what="#1 replaced by #2")
    gate.write_text("")
    done.join(60)
    assert out[0].returncode == 0, out[0]
    poll_until(lambda: ready_workers(s, "gated") == 1, what="#2 ready")
    app = s.app_status("gated")
    assert app["failed_starts"] == 0 and app["last_error"] is None and app["state"] == "running"
    assert s.get("/")[2] == b"ok"
