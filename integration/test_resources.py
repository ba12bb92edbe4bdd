"""Issue 11, item 10: resources a run holds are given back: runtime folders, open-file limits,
memory (memory_limit), and a log disk that fills up."""
import http.client
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from harness import Server, app_config, copy_app


def run_folders(config: Path) -> tuple[Path, list[Path]]:
    """The run's instance folder (control socket, lock) and its worker socket folders, found
    without creating anything (the harness's control_path() would make the instance folder)."""
    from passenger_lite.manager.runtimedir import _digest, base_dir

    digest = _digest(config)
    return base_dir() / digest, sorted(base_dir(workers=True).glob(f"{digest}-w-*"))


def wait_gone(paths, timeout: float = 10) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in paths if p.exists()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def wsgi(apps_dir, **kw):
    return app_config("echo", copy_app("wsgi_echo", apps_dir), **kw)


@pytest.mark.parametrize("how", ["stop", "sigterm"])
def test_run_folders_are_removed_when_the_run_ends(make_server, apps_dir, how):
    s = make_server({"apps": [wsgi(apps_dir)]})
    inst, workers = run_folders(s.config)
    assert (inst / "lock").exists() and (inst / "control.sock").exists() and len(workers) == 1
    assert any(workers[0].iterdir())  # the worker's socket folder
    if how == "stop":
        assert s.cli("stop").returncode == 0
    s.stop()
    assert wait_gone([inst, *workers], timeout=1) == []


def test_run_folders_of_a_killed_manager_are_removed_by_its_watchdog(make_server, apps_dir):
    s = make_server({"apps": [wsgi(apps_dir)]})
    inst, workers = run_folders(s.config)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(10)
    s.stop()  # the harness checks that the workers and the watchdog are gone
    assert wait_gone([inst, *workers]) == []
    # and the same config starts again at once, its folders made anew
    s2 = make_server({"apps": [wsgi(apps_dir / "2")]})
    assert s2.get("/env")[0] == 200
    inst2, workers2 = run_folders(s2.config)
    assert inst2.exists() and len(workers2) == 1


def test_the_next_start_removes_folders_whose_owner_is_gone(make_server, apps_dir, tmp_path):
    """Manager and watchdog both killed (OOM killer, power loss): any later start cleans up."""
    s = make_server({"apps": [wsgi(apps_dir)]})
    inst, workers = run_folders(s.config)
    s.track()
    for p in s.seen.values():  # the watchdog first, so nobody cleans up
        if "watchdog.py" in " ".join(p.cmdline()):
            p.kill()
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(10)
    s.kill_leftovers()
    s.stop()
    time.sleep(0.5)
    if not (inst.exists() and workers[0].exists()):  # nobody of this run was left to remove them...
        # ...so another passenger-lite on this machine (another checkout's tests) did it first
        pytest.skip("another passenger-lite started meanwhile and removed the dead run's folders first")
    other = make_server({"apps": [wsgi(tmp_path / "other_apps")]})  # another config altogether
    assert other.get("/env")[0] == 200
    assert wait_gone([inst, *workers], timeout=1) == []
    assert run_folders(other.config)[0].exists()  # its own stay while it runs


def test_a_second_start_of_a_running_config_is_still_refused(make_server, apps_dir):
    """Removing the lock file at the end must not let two managers run for one config."""
    s = make_server({"apps": [wsgi(apps_dir)]})
    from harness import cli_command

    r = subprocess.run(cli_command() + ["start", "--config", str(s.config)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "already running" in r.stderr
    assert s.get("/env")[0] == 200
    s.stop()
    again = Server(s.dir, {"apps": [wsgi(apps_dir / "again")]})  # the same sites.yaml path
    try:
        again.start()
        assert again.config == s.config and again.get("/env")[0] == 200
    finally:
        again.stop()


# ---------------------------------------------------------------------------------------- open files

class LowLimitServer(Server):
    """Started with the soft open-files limit at 1024, as most logins and units give."""

    def command(self) -> list[str]:
        return ["prlimit", "--nofile=1024:20000", "--", *super().command()]


def nofile(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_the_open_files_limit_is_raised_and_max_connections_holds(apps_dir, tmp_path):
    import socket

    if nofile(os.getpid())[0] < 1300:
        pytest.skip("this test process itself needs about 1200 descriptors")
    s = LowLimitServer(tmp_path / "s", {"max_connections": 1100, "apps": [wsgi(apps_dir, max_processes=1)]})
    clients = []
    try:
        s.start()
        assert nofile(s.proc.pid) == (20000, 20000)
        assert "open files limit 20000 (raised from 1024)" in s.logs()
        worker = s.app_status("echo")["workers"][0]["pid"]
        assert nofile(worker)[0] == 20000  # workers inherit it
        for _ in range(1099):  # idle connections, more than 1024 descriptors' worth
            clients.append(socket.create_connection(("127.0.0.1", s.port), timeout=10))
        # the 1100th is still served; the 1101st gets 503 (not an empty reply) and a log line
        last = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        clients.append(last)
        last.sendall(b"GET /env HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: it stays open
        r = http.client.HTTPResponse(last)
        r.begin()
        assert r.status == 200 and r.read()
        extra = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        clients.append(extra)
        answer = recv_all(extra)  # answered as it connects (a request sent now could meet a reset)
        assert answer.startswith(b"HTTP/1.1 503") and b"too many open connections" in answer
        deadline = time.monotonic() + 5
        while "max_connections (1100) reached" not in s.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "connection(s) refused with 503: max_connections (1100) reached" in s.logs()
        for c in clients:
            c.close()
        clients.clear()
        # after the flood: served at once, nothing in flight or queued
        assert s.get("/env", timeout=5)[0] == 200
        st = s.app_status("echo")
        assert st["queue"] == 0 and [w["in_flight"] for w in st["workers"]] == [0]
    finally:
        for c in clients:
            c.close()
        s.stop()


def test_a_limit_too_low_for_max_connections_is_said(apps_dir, tmp_path):
    class Capped(Server):
        def command(self):
            return ["prlimit", "--nofile=512:512", "--", *super().command()]

    s = Capped(tmp_path / "s", {"max_connections": 2000, "apps": [wsgi(apps_dir)]})
    try:
        s.start()
        assert "open files limit 512 is below max_connections (2000)" in s.logs()
        assert s.get("/env")[0] == 200
    finally:
        s.stop()


def recv_all(sock) -> bytes:
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk


# ---------------------------------------------------------------------------------------- memory_limit

GROWING = """\
import os, time
held = []
PAGE = os.sysconf("SC_PAGE_SIZE")

def application(environ, start_response):
    if environ["PATH_INFO"] == "/grow":
        chunk = bytearray(8 * 1024 * 1024)
        for i in range(0, len(chunk), 4096):  # touch every page: resident, not just reserved
            chunk[i] = 1
        held.append(chunk)
        time.sleep(0.06)  # a request that does some work
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * PAGE
    body = f"{os.getpid()} {rss}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_memory_limit_is_checked_after_each_request(make_server, apps_dir):
    """A worker that grows 8 MiB per request is replaced soon after it passes memory_limit (it
    used to be checked every 2 s: a 100 MiB limit reached 457 MiB), and the next request is
    served at once by a new worker."""
    root = apps_dir / "grow"
    root.mkdir()
    (root / "passenger_wsgi.py").write_text(GROWING)
    limit = 100
    s = make_server({"apps": [app_config("grow", root, type="python-wsgi", memory_limit=limit,
                                         min_processes=1, max_processes=1)]})
    first = int(s.get("/")[2].split()[0])
    peak = 0
    for _ in range(60):  # at most 480 MiB, even if nothing recycles it
        status, _, body = s.get("/grow", timeout=10)
        assert status == 200
        pid, rss = map(int, body.split())
        if pid != first:
            break
        peak = max(peak, rss)
    else:
        raise AssertionError(f"never recycled; peak {peak / 2**20:.0f} MiB\n{s.logs()}")
    print(f"memory_limit {limit} MiB: peak RSS {peak / 2**20:.0f} MiB before the new worker answered")
    assert peak > limit * 2**20  # it did pass the limit
    # replaced within a few requests: the replacement's start, not seconds of requests
    assert peak < (limit + 80) * 2**20, f"peak {peak / 2**20:.0f} MiB for memory_limit {limit} MiB"
    assert f"(memory_limit {limit} MiB)" in s.logs()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = s.app_status("grow")
        if [w["state"] for w in st["workers"]] == ["ready"]:
            break
        time.sleep(0.05)
    assert [w["state"] for w in st["workers"]] == ["ready"] and st["queue"] == 0
    assert all(w["in_flight"] == 0 for w in st["workers"])
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert s.get("/", timeout=5)[0] == 200


# ---------------------------------------------------------------------------------------- full log disk

SPAM = """\
import fcntl, struct, sys, termios, time

def application(environ, start_response):
    n, _, tag = (environ.get("QUERY_STRING") or "0").partition("-")
    for i in range(int(n)):
        print(f"spam {tag}{i:05d} " + "x" * 80 + " end", flush=True)
    # answer once the manager has read every line (the pipe to it is empty), so the test sees
    # the log as it is after these lines, not while the manager is still catching up
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if struct.unpack("i", fcntl.ioctl(1, termios.FIONREAD, b"\\0" * 4))[0] == 0:
            break
        time.sleep(0.005)
    body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [body]
"""


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB file system (tmpfs), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def settled_text(path, quiet: float = 0.3, timeout: float = 10) -> str:
    """The file once it has stopped changing for `quiet` s: the manager writes what a worker
    printed from its own task, which may still be at it when the worker's answer has arrived."""
    deadline = time.monotonic() + timeout
    last = path.read_bytes()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = path.read_bytes()
        if now == last:
            break
        last = now
    return last.decode()


def spam_lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if " | spam " in x]


def test_a_full_log_disk_is_said_once_and_no_line_is_torn(small_disk, make_server, apps_dir):
    root = apps_dir / "spam"
    root.mkdir()
    (root / "passenger_wsgi.py").write_text(SPAM)
    filler = small_disk / "filler"
    filler.write_bytes(b"f" * 24 * 1024)  # freed later, so the disk can take lines again
    log_file = small_disk / "pl.log"
    s = make_server({"log_file": str(log_file), "apps": [app_config("spam", root, type="python-wsgi")]})
    total = 0
    for _ in range(5):  # about 100 KiB of lines onto a 64 KiB disk
        assert s.get("/?200")[0] == 200
        total += 200
    stderr = s.logs()  # the harness's capture of the manager's stderr (on a roomy disk)
    assert "Logging error" not in stderr and "Traceback" not in stderr
    said = [x for x in stderr.splitlines() if f"log_file {log_file}: No space left on device" in x]
    assert len(said) == 1, stderr[-2000:]
    assert "dropping log lines until it can be written again" in said[0]
    text = settled_text(log_file)
    assert text.endswith("\n")
    for line in text.splitlines():  # whole lines only: none cut off by the full disk
        assert line.endswith(" end") or " | spam " not in line, f"torn line: {line!r}"
    written = len(spam_lines(text))
    assert 0 < written < total
    # room again: the next line is written, after the count of what was dropped
    filler.unlink()
    assert s.get("/?3-after")[0] == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "spam after00002" not in log_file.read_text():
        time.sleep(0.05)
    text = log_file.read_text()
    assert all(f"spam after0000{i}" in text for i in range(3))
    notes = [x for x in text.splitlines() if "line(s) dropped while it could not be written" in x]
    assert len(notes) == 1
    assert text.index(notes[0]) < text.index("spam after00000")
    dropped = int(notes[0].split(": ")[1].split()[0])
    written = len(spam_lines(text))  # every line was either written or dropped (and counted)
    assert total + 3 - written <= dropped <= total + 3 - written + 10  # the spam, and any line of ours
    assert "line(s) dropped while it could not be written" in s.logs()
    st = s.app_status("spam")
    assert st["queue"] == 0 and [w["state"] for w in st["workers"]] == ["ready"]
    s.stop()


def test_status_and_stop_of_a_config_that_is_not_running_leave_no_folder(tmp_path):
    from harness import run_cli

    cfg = tmp_path / "sites.yaml"
    cfg.write_text("apps: []\n")
    for cmd in ("status", "stop"):
        r = run_cli(cmd, "--config", str(cfg))
        assert r.returncode == 1 and "no passenger-lite is running" in r.stderr, r.stderr
    inst, workers = run_folders(cfg)
    assert not inst.exists() and workers == []
