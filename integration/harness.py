"""Run the real `passenger-lite` CLI against real apps, over real sockets, and clean up after it.

    with Server(tmp_path, {"apps": [...]}) as s:      # writes sites.yaml, starts, waits ready
        status, headers, body = s.get("/env", host="blog.test")

Every process the manager started is recorded while it runs; `stop()` ends the manager and then
asserts that none of them (workers, their children, the watchdog) is still alive.
"""
from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from passenger_lite.manager.unixhttp import UnixHTTPConnection

# manager/loopwatch.py: the manager logs "event loop blocked for N s" (with the stack) past this
# many seconds, and stop() fails the test; generous, for a loaded 2-core machine
LOOPWATCH_ENV, LOOPWATCH_MARK, LOOP_STALL_LIMIT = "PASSENGER_LITE_DEBUG_LOOP", "event loop blocked for", "1.0"

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APPS = REPO / "tests" / "apps"


def free_port() -> int:
    """A port free NOW, for a test that must write a second address into its config before start.
    Racy (another process may take it before the server binds it): a Server's own listener uses
    port 0 instead and reads the bound port back from `status --json`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_command() -> list[str]:
    exe = shutil.which("passenger-lite")
    if exe:
        return [exe]
    return [sys.executable, "-m", "passenger_lite.manager.cli"]


def elsewhere() -> Path:
    """An empty folder that holds no config: the CLI always runs from here (as systemd runs it
    from /), so a path that only works from the config's folder fails every test (issue 12)."""
    d = Path(tempfile.gettempdir()) / f"pl-elsewhere-{os.getpid()}"
    if not d.is_dir():
        d.mkdir(mode=0o755)
        atexit.register(shutil.rmtree, d, True)
    return d


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 60, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
    if cwd is not None and "--config" in args:
        config = Path(args[list(args).index("--config") + 1])
        assert Path(cwd).resolve() != config.absolute().parent.resolve(), "run the CLI from elsewhere"
    return subprocess.run(cli_command() + list(args), cwd=cwd or elsewhere(), capture_output=True, text=True,
                          timeout=timeout, env=env, input=input)


def copy_app(name: str, dest: Path) -> Path:
    """A fresh copy of tests/apps/NAME under dest (apps may be edited by a test)."""
    target = dest / name
    shutil.copytree(APPS / name, target, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    return target


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Server:
    def __init__(self, workdir: Path, config: dict | str, *, port: int | None = None, args: tuple = (),
                 env: dict | None = None, wait: bool = True, ready_timeout: float = 30,
                 app_user: str | None = "root"):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # port 0: the kernel picks a free port at bind time (no probe-then-bind race); `port` reads
        # the bound one back from `status --json` (its `listen` URLs)
        self._asked_port = port
        self._port = port
        if isinstance(config, dict):
            config = dict(config)
            config.setdefault("listen", [f"127.0.0.1:{port or 0}"])
            config = with_app_user(config, app_user)
            text = yaml.safe_dump(config, sort_keys=False)
        else:
            text = config.replace("@PORT@", str(port or 0))
        self.config = self.dir / "sites.yaml"
        self.config.write_text(text)
        self.log_path = self.dir / "server.log"
        self.args = args
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.seen: dict[int, psutil.Process] = {}
        self.ready_timeout = ready_timeout
        self._wait = wait

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault(LOOPWATCH_ENV, LOOP_STALL_LIMIT)  # a stall of the manager's loop is logged
        if self.env:
            env.update(self.env)
        self._port = self._asked_port  # a port 0 listener gets a new port on every start
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=elsewhere(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        if self._wait:
            self.wait_ready(self.ready_timeout)

    def command(self) -> list[str]:
        """The `start` command line (a subclass may run it as another user)."""
        return cli_command() + ["start", "--config", str(self.config), *self.args]

    def wait_ready(self, timeout: float = 30) -> dict:
        """Until the control socket answers and every app's boot is over (`boot` is "up" or
        "failed": AppPool.boot_state)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"passenger-lite exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                st = self.status()
                last = st
                self.track()
                self._read_port(st)
                if all(a["boot"] != "booting" for a in st["apps"]):
                    return st
            except (OSError, ValueError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready within {timeout} s; last status {last}\n{self.logs()}")

    @property
    def port(self) -> int:
        """The port of the first plain-HTTP TCP listener, as bound (read from status once)."""
        if self._port is None:
            self._read_port(self.status())
            assert self._port is not None, f"no http:// TCP listener in status: {self.status()['listen']}"
        return self._port

    def _read_port(self, st: dict) -> None:
        if self._port is None:
            self._port = next((int(u.rsplit(":", 1)[1]) for u in st.get("listen", [])
                               if u.startswith("http://")), None)

    def track(self) -> None:
        """Remember every descendant of the manager, to check none outlives it."""
        if self.proc is None:
            return
        try:
            for c in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(c.pid, c)
        except psutil.Error:
            pass

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc is None:
            return 0
        self.track()
        broken = self.invariant_problems() if self.proc.poll() is None else None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            self.kill_leftovers()
            raise AssertionError(f"passenger-lite did not stop within {timeout} s\n{self.logs()}")
        finally:
            self._log.close()
        self.assert_no_leftovers()
        stalls = self.loop_stalls()
        assert not stalls, f"the manager's event loop was blocked:\n" + "\n".join(stalls)
        assert not broken, f"pool invariants broken before stop: {broken}\n{self.logs()[-3000:]}"
        return code

    def loop_stalls(self) -> list[str]:
        """What manager/loopwatch.py logged while serving: from start to the `stopping` line (the
        stop's last steps, after the drain, may wait: nothing is served any more)."""
        out, lines = [], self.logs().splitlines()
        for i, line in enumerate(lines):
            if "stopping (in-flight requests" in line:
                break
            if LOOPWATCH_MARK in line:
                out.append("\n".join(lines[i:i + 9]))
        return out

    def invariant_problems(self) -> dict | None:
        """AppPool.check_invariants() of every app ({} when all hold); None when the manager
        does not answer (not started, or stopping)."""
        try:
            return self.control("GET", "/invariants", timeout=5)[1]["problems"]
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            return None

    def leftovers(self, grace: float = 5.0) -> list[psutil.Process]:
        deadline = time.monotonic() + grace
        while True:
            left = [p for p in self.seen.values() if alive(p)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    def kill_leftovers(self) -> None:
        for p in self.seen.values():
            try:
                p.kill()
            except psutil.Error:
                pass

    def assert_no_leftovers(self, grace: float = 5.0) -> None:
        left = self.leftovers(grace)
        if left:
            desc = [(p.pid, " ".join(p.cmdline())[:120]) for p in left if alive(p)]
            self.kill_leftovers()
            raise AssertionError(f"processes outlived passenger-lite: {desc}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------------ talking to it

    def control_path(self) -> Path:
        from passenger_lite.manager.runtimedir import control_socket

        return control_socket(self.config)

    def control(self, method: str, path: str, timeout: float = 60) -> tuple[int, dict]:
        conn = UnixHTTPConnection(str(self.control_path()), timeout)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    def status(self) -> dict:
        return self.control("GET", "/status", timeout=5)[1]

    def app_status(self, name: str) -> dict:
        return next(a for a in self.status()["apps"] if a["name"] == name)

    def wait_status(self, cond, what: str, timeout: float = 20) -> dict:
        """Poll `status` until cond(status) is true (instead of sleeping for an event to happen);
        fail naming `what` and showing the last status after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if cond(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout} s; last status {st}")
            time.sleep(0.02)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run_cli(*args, "--config", str(self.config), timeout=timeout)

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body=None, headers: dict | None = None, host: str | None = None,
                timeout: float = 30) -> tuple[int, dict, bytes]:
        c = self.connection(timeout)
        h = dict(headers or {})
        if host:
            h["Host"] = host
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def get(self, path: str = "/", **kw) -> tuple[int, dict, bytes]:
        return self.request("GET", path, **kw)

    def get_json(self, path: str, **kw) -> dict:
        status, _, body = self.get(path, **kw)
        assert status == 200, (status, body[:500])
        return json.loads(body)

    def raw(self, data: bytes, timeout: float = 5, read_until_close: bool = True) -> bytes:
        """Send raw bytes, return everything the server answers until it closes (or timeout)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            s.sendall(data)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                out += chunk
                if not read_until_close and b"\r\n\r\n" in out:
                    break
            return out
        finally:
            s.close()


def app_of(status: dict, name: str) -> dict:
    """The app NAME of a status dict."""
    return next(a for a in status["apps"] if a["name"] == name)


def with_app_user(config: dict, user: str | None) -> dict:
    """Tests run as root, and a root manager runs an app whose folder root owns as nobody, who
    cannot enter pytest's 0700 temp folders (issue 7). So, run as root, every app of a dict
    config that does not say `user:` gets `user: <user>` (root): the apps run as they always did.
    A test of the default rules passes app_user=None; YAML-text configs are written as given."""
    if user is None or os.geteuid() != 0 or not isinstance(config.get("apps"), list):
        return config
    apps = [dict(a, user=user) if isinstance(a, dict) and "user" not in a else a for a in config["apps"]]
    return dict(config, apps=apps)


def app_config(name: str, root: Path, **kw) -> dict:
    """One app of a dict config; run as root, with `user: root` unless `user=` is given (see
    with_app_user: configs a test rewrites for a reload keep their apps' user)."""
    d = {"name": name, "root": str(root)}
    if os.geteuid() == 0:
        d["user"] = "root"
    d.update(kw)
    return d
