"""Process bookkeeping for the bench: start every service in a session of its own, remember every
pid that belongs to it, stop it the way it wants to be stopped, and prove that nothing is left.

Liveness is judged from /proc (a zombie is dead): PID 1 on these VMs reaps orphans slowly, and
kill(pid, 0) succeeds on a zombie (see /work/shared/anchors/analysis.md).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")  # clock ticks per second in /proc/*/stat


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(root: int, kids: dict | None = None) -> list[int]:
    kids = children_map() if kids is None else kids
    out, todo = [], [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def cpu_ticks(pids) -> int:
    """utime + stime of the given processes, in clock ticks (dead ones count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                v = f.read().rsplit(")", 1)[1].split()
            total += int(v[11]) + int(v[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_split(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks of one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return int(v[11]), int(v[12])
    except (OSError, IndexError, ValueError):
        return 0, 0


def wait_gone(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


class Service:
    """One started command (own session). `stop_signal` ends it; `extra` are pids it made that
    left its process tree (daemons), found by the caller after start."""

    def __init__(self, name: str, popen: subprocess.Popen, stop_signal: int):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.stop_signal = stop_signal
        self.known: set[int] = {popen.pid}
        self.pid_files: list[Path] = []

    def remember(self) -> None:
        """Record the current process tree (and daemons named by pid files) as ours."""
        kids = children_map()
        roots = [self.pid]
        for f in self.pid_files:
            try:
                roots.append(int(f.read_text().strip()))
            except (OSError, ValueError):
                pass
        for r in roots:
            self.known.add(r)
            self.known.update(descendants(r, kids))


class Procs:
    def __init__(self, run_dir: Path, log_dir: Path):
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.services: list[Service] = []

    def start(self, name: str, argv: list[str], *, cwd=None, env=None, stop_signal=signal.SIGTERM) -> Service:
        log = open(self.log_dir / f"{name}.log", "ab")
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        log.close()
        s = Service(name, p, stop_signal)
        self.services.append(s)
        return s

    def stop(self, s: Service, timeout: float = 20) -> None:
        self.stop_many([s], timeout)

    def stop_many(self, services: list[Service], timeout: float = 20) -> None:
        """Each its stop signal at once, then (after `timeout`) KILL to whatever of them is left."""
        for s in services:
            s.remember()
            if s.popen.poll() is None:
                try:
                    os.kill(s.pid, s.stop_signal)
                except ProcessLookupError:
                    pass
        known = {p for s in services for p in s.known}
        for p in wait_gone(known, timeout):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for s in services:
            try:
                s.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            try:  # helpers left in the process group we created (Passenger's `tail -f`)
                os.killpg(s.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if s in self.services:
                self.services.remove(s)
        wait_gone(known, 3)

    def stop_all(self) -> list[int]:
        """Stop every service still running; returns every pid they were known to have."""
        services = list(self.services)
        try:
            self.stop_many(services, timeout=15)
        except Exception as e:  # noqa: BLE001 - the sweep and the check still run
            print(f"bench: stopping: {e}", flush=True)
        return sorted({p for s in services for p in s.known})

    def sweep(self) -> list[str]:
        """Kill and name any live process whose command line mentions the run folder (helpers of
        Passenger that left every tree we know); returns what it had to kill."""
        me = os.getpid()
        killed = []
        marker = str(self.run_dir)
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) != me:
                pid = int(d)
                cmd = cmdline(pid)
                if marker in cmd and alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(f"{pid} {cmd[:160]}")
                    except ProcessLookupError:
                        pass
        return killed

    def leftovers(self, pids) -> list[str]:
        return [f"{p} {cmdline(p)[:160]}" for p in pids if alive(p)]
