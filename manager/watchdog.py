"""The watchdog: kills every worker's process group when the front process dies, even by SIGKILL.

Per-process tricks (PR_SET_PDEATHSIG) miss grandchildren, so, as Passenger does, a separate tiny
process keeps the list. The front process tells it each worker's process group over a pipe
(`+PGID` / `-PGID` lines); when the pipe reaches EOF (the front process ended, however it ended)
the watchdog sends TERM to every group still listed, then KILL to what is left after a grace.

Process groups miss a daemon that called `setsid`: the watchdog also kills the run's cgroup, or
every process carrying the run's marker (manager/descendants.py says which and why). Then it
removes the run's folders (manager/runtimedir.py) unless a new manager holds the lock already.

This file is also the watchdog program itself: it runs as
`python -S watchdog.py FD [--cgroup PATH | --marker RUN] [--workers-dir D] [--instance-dir D]`, in
its own session (Ctrl-C in the terminal does not reach it), with nothing but the standard library.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE = 2.0


class Watchdog:
    """The front process's side."""

    def __init__(self):
        self._w: int | None = None
        self.proc: subprocess.Popen | None = None
        self.descendants = None  # descendants.Descendants, once started

    def start(self, workers_dir=None, instance_dir=None) -> str:
        """Start the watchdog; returns the log line that says how descendants are tracked."""
        from .descendants import Descendants

        self.descendants = Descendants()
        line = self.descendants.start()
        args = self.descendants.watchdog_args()
        if workers_dir is not None:
            args += ["--workers-dir", str(workers_dir)]
        if instance_dir is not None:
            args += ["--instance-dir", str(instance_dir)]
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-S", os.path.abspath(__file__), str(r), *args], pass_fds=[r],
            stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        self.descendants.known.add(self.proc.pid)
        os.close(r)
        self._w = w
        return line

    def stop_descendants(self) -> None:
        """The workers are stopped: kill whatever they left (setsid'd daemons)."""
        if self.descendants is not None:
            self.descendants.stop()

    def _send(self, line: bytes) -> None:
        if self._w is not None:
            try:
                os.write(self._w, line)
            except OSError:
                pass

    def add(self, pgid: int) -> None:
        self._send(b"+%d\n" % pgid)

    def remove(self, pgid: int) -> None:
        self._send(b"-%d\n" % pgid)

    def close(self) -> None:
        """Normal end: every worker is gone already; the watchdog exits on EOF (told first that
        the manager removes its folders itself)."""
        self._send(b"=\n")
        if self._w is not None:
            os.close(self._w)
            self._w = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=GRACE + 3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies still answer killpg(0); look for a member that is not one
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
            except (OSError, IndexError, ValueError):
                continue
    return False


def _options(argv: list[str]) -> dict[str, str]:
    out = {}
    for i in range(0, len(argv) - 1, 2):
        if argv[i].startswith("--"):
            out[argv[i][2:]] = argv[i + 1]
    return out


def _clean(opts: dict[str, str]) -> None:
    """After the groups: what left them, then the run's folders."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import descendants  # both stdlib-only, imported by path (no site-packages under -S)
    import runtimedir

    if "cgroup" in opts:
        descendants.kill_cgroup(opts["cgroup"])
        descendants.remove_cgroup(opts["cgroup"], wait=GRACE)
    elif "marker" in opts:
        descendants.kill_marked(opts["marker"])
    runtimedir.remove_run(opts.get("workers-dir"), opts.get("instance-dir"))


def main(fd: int, opts: dict[str, str] | None = None) -> None:
    opts = opts or {}
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    buf = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            break
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
            elif line == b"=":
                opts.pop("workers-dir", None)
                opts.pop("instance-dir", None)
    for g in groups:
        try:
            os.killpg(g, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + GRACE
    left = set(groups)
    while left and time.monotonic() < deadline:
        left = {g for g in left if _alive(g)}
        time.sleep(0.05)
    for g in left:
        try:
            os.killpg(g, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _clean(opts)


if __name__ == "__main__":
    main(int(sys.argv[1]), _options(sys.argv[2:]))
