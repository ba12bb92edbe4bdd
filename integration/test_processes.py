"""Issue 11, item 9: nothing a worker started outlives the manager or its worker, not even a
daemon that double-forks, calls setsid (leaving the worker's process group and session) and
ignores SIGTERM. For every app type, and for every way the manager can end."""
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from harness import app_config

# Started by the app when it loads: forks, the child exits (so the daemon is an orphan), the
# grandchild leaves session and group, ignores SIGTERM and appends its pid to daemons.txt.
DAEMON = textwrap.dedent("""\
    import os, signal, sys, time
    if os.fork():
        os._exit(0)
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()}\\n")
    while True:
        time.sleep(1)
    """)

WSGI = """\
import subprocess, sys, os
subprocess.run([{py!r}, {daemon!r}, {pids!r}])
def application(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

ASGI = """\
import subprocess, os
subprocess.run([{py!r}, {daemon!r}, {pids!r}])
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = str(os.getpid()).encode()
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}})
    await send({{"type": "http.response.body", "body": body}})
"""

RACK = """\
system({py!r}, {daemon!r}, {pids!r})
run(lambda {{ |env| [200, {{ "content-type" => "text/plain" }}, [Process.pid.to_s]] }})
"""

NODE = """\
const cp = require('child_process');
cp.spawnSync({py!r}, [{daemon!r}, {pids!r}], {{ stdio: 'ignore' }});
require('http').createServer((req, res) => res.end(String(process.pid))).listen(3000);
"""

COMMAND_SERVER = """\
import http.server, os, socket, socketserver, subprocess, sys
subprocess.run([{py!r}, {daemon!r}, {pids!r}])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    do_OPTIONS = do_GET
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    def get_request(self):
        r, _ = self.socket.accept(); return r, ("local", 0)
if "PORT" in os.environ:
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
else:
    S(os.environ["PASSENGER_LITE_SOCKET"], H).serve_forever()
"""

APP_TYPES = ["python-wsgi", "python-asgi", "ruby-rack", "node", "command"]


def make_app(root: Path, kind: str) -> tuple[dict, Path]:
    root.mkdir(parents=True, exist_ok=True)
    daemon = root / "daemon.py"
    daemon.write_text(DAEMON)
    pids = root / "daemons.txt"
    fmt = {"py": sys.executable, "daemon": str(daemon), "pids": str(pids)}
    cfg = app_config(kind.replace("-", ""), root, type=kind, min_processes=1, max_processes=1)
    if kind == "python-wsgi":
        (root / "passenger_wsgi.py").write_text(WSGI.format(**fmt))
    elif kind == "python-asgi":
        (root / "asgi.py").write_text(ASGI.format(**fmt))
    elif kind == "ruby-rack":
        (root / "config.ru").write_text(RACK.format(**fmt))
    elif kind == "node":
        (root / "app.js").write_text(NODE.format(**fmt))
    else:
        (root / "server.py").write_text(COMMAND_SERVER.format(**fmt))
        cfg["command"] = [sys.executable, "server.py"]
    return cfg, pids


def daemons(pids: Path, n: int, timeout: float = 20) -> list[int]:
    """The pids of the first n daemons, once they all wrote theirs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pids.exists():
            got = [int(x) for x in pids.read_text().split()]
            if len(got) >= n:
                return got
        time.sleep(0.05)
    raise AssertionError(f"{n} daemon(s) expected in {pids}: {pids.read_text() if pids.exists() else 'none'}")


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def gone_within(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if running(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kill_all(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def check_daemon_escaped_its_group(pid: int, worker_pid: int) -> None:
    """The test is only worth something if the daemon really left the worker's group and session."""
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid != os.getpgid(worker_pid)
    with open(f"/proc/{pid}/status") as f:
        ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    assert ignored & (1 << (signal.SIGTERM - 1))


MECHANISMS = {"cgroup": {}, "subreaper": {"PASSENGER_LITE_CGROUP": "off"}}


def _cgroup_usable() -> bool:
    from passenger_lite.manager.descendants import cgroup2_base

    base = cgroup2_base()
    return base is not None and os.access(base, os.W_OK)


@pytest.mark.parametrize("how", ["stop", "sigterm", "sigkill"])
@pytest.mark.parametrize("kind", APP_TYPES)
@pytest.mark.parametrize("mechanism", ["cgroup", "subreaper"])
def test_a_setsid_daemon_does_not_outlive_the_manager(make_server, tmp_path, kind, how, mechanism):
    if mechanism == "cgroup" and not _cgroup_usable():
        pytest.skip("no writable cgroup v2 here")
    if mechanism == "subreaper" and kind not in ("python-wsgi", "node"):
        pytest.skip("the subreaper fallback is checked on two app types")  # keeps the suite short
    cfg, pids = make_app(tmp_path / "app", kind)
    s = make_server({"apps": [cfg]}, env=MECHANISMS[mechanism])
    assert f"tracked {'in cgroup' if mechanism == 'cgroup' else 'as a child subreaper'}" in s.logs()
    status, _, body = s.get("/")
    assert status == 200
    [d] = daemons(pids, 1)
    try:
        check_daemon_escaped_its_group(d, int(body))
        if how == "stop":
            r = s.cli("stop")
            assert r.returncode == 0, r.stderr
            s.stop()
        elif how == "sigterm":
            s.stop(signal.SIGTERM)
        else:
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait(10)
            s.track()
            s.stop()  # the harness checks the workers and the watchdog are gone too
        assert gone_within([d]) == [], f"the setsid'd daemon {d} outlived passenger-lite ({how})"
    finally:
        kill_all([d])


@pytest.mark.parametrize("kind", APP_TYPES)
def test_restarts_do_not_pile_up_daemons(make_server, tmp_path, kind):
    """Each worker's daemon goes with its worker: after two restarts one daemon is left, the
    newest, and the app answers at once from a new worker."""
    cfg, pids = make_app(tmp_path / "app", kind)
    s = make_server({"apps": [cfg]})
    name = cfg["name"]
    first = int(s.get("/")[2])
    try:
        for n in (2, 3):
            r = s.cli("restart", name)
            assert r.returncode == 0, r.stdout + r.stderr
            all_daemons = daemons(pids, n)
            assert gone_within(all_daemons[:-1]) == [], f"daemons of replaced workers live on: {all_daemons}"
            assert running(all_daemons[-1])
        status, _, body = s.get("/", timeout=5)
        assert status == 200 and int(body) != first
        st = s.app_status(name)
        assert [w["state"] for w in st["workers"]] == ["ready"] and st["queue"] == 0
        assert all(w["in_flight"] == 0 for w in st["workers"])
        s.stop()
        assert gone_within(all_daemons) == []
    finally:
        kill_all(daemons(pids, 1))


def test_a_worker_that_exits_takes_its_daemon_along(make_server, tmp_path):
    """A crash (SIGKILL of the worker) is an end too: its daemon goes, the replacement gets its own."""
    cfg, pids = make_app(tmp_path / "app", "python-wsgi")
    s = make_server({"apps": [cfg]})
    pid = int(s.get("/")[2])
    try:
        [d] = daemons(pids, 1)
        os.kill(pid, signal.SIGKILL)
        assert gone_within([d]) == []
        d2 = daemons(pids, 2)[1]
        assert running(d2)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, _, body = s.get("/")
            if status == 200 and int(body) != pid:
                break
            time.sleep(0.1)
        assert int(body) != pid
    finally:
        kill_all(daemons(pids, 1))


def test_no_cgroup_is_left_behind(make_server, tmp_path):
    if not _cgroup_usable():
        pytest.skip("no writable cgroup v2 here")
    from passenger_lite.manager.descendants import cgroup2_base

    cfg, pids = make_app(tmp_path / "app", "python-wsgi")
    s = make_server({"apps": [cfg]})
    s.get("/")
    path = Path(cgroup2_base()) / f"passenger-lite-{s.proc.pid}"
    assert path.is_dir() and len([p for p in path.iterdir() if p.is_dir()]) == 1  # one worker: w1
    try:
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(10)
        s.stop()
        deadline = time.monotonic() + 10
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not path.exists(), "the watchdog did not remove the killed run's cgroup"
    finally:
        kill_all(daemons(pids, 1))
