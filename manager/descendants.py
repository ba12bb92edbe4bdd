"""Keeping track of everything a worker started, in a way `setsid` cannot leave (issue 11, item 9).

A worker runs in its own process group, and stopping it signals that group; but a daemon the
worker starts may call `setsid` and leave the group (and ignore SIGTERM). Two mechanisms catch it:

- **cgroup** (used when one can be had): a cgroup v2 folder of our own, `passenger-lite-<pid>`,
  under the manager's own cgroup (root, or a systemd unit with `Delegate=yes`), with one child
  folder per worker. A process cannot leave its cgroup by itself, whatever it does with sessions.
  When a worker's main process exits, its cgroup is killed (`cgroup.kill`, or SIGKILL to every
  pid in `cgroup.procs` on kernels before 5.14) and removed; the watchdog kills and removes the
  whole run's cgroup when the manager ends, however it ends; the next start removes leftovers of
  managers that are gone.
- **subreaper** (no writable cgroup v2, e.g. an unprivileged user outside a delegated unit): the
  manager is a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`), so orphans of its workers are
  reparented to it rather than to init, and every worker's environment carries a marker
  (`PASSENGER_LITE_WORKER=<run>.<n>`) that its descendants inherit. When a worker exits, every
  process with its marker is killed; at stop, every child left of the manager (reparented
  orphans) and every process with the run's marker; after a SIGKILL of the manager the watchdog
  kills every process with the run's marker. Limit: a daemon that both leaves its session and
  clears its environment is caught at `stop` and SIGTERM, not after a SIGKILL of the manager.

PASSENGER_LITE_CGROUP=off forces the subreaper mechanism (used by the tests).
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import time

log = logging.getLogger("passenger_lite.manager")

PR_SET_CHILD_SUBREAPER = 36
MARKER = "PASSENGER_LITE_WORKER"
PREFIX = "passenger-lite-"
# This module is also imported by the watchdog program (python -S, by path): standard library only.


# ---------------------------------------------------------------------------------------- cgroup v2

def cgroup2_base() -> str | None:
    """The folder of our own cgroup in the cgroup v2 hierarchy, or None."""
    mount = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    mount = left.split()[4]
                    break
        if mount is None:
            return None
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    rel = line[3:].strip()
                    return os.path.join(mount, rel.lstrip("/")) if rel != "/" else mount
    except OSError:
        return None
    return None


def _procs(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def kill_cgroup(path: str) -> None:
    """SIGKILL everything in cgroup `path` and its children."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
        return
    except FileNotFoundError:
        if not os.path.isdir(path):
            return
    except OSError:
        pass
    for _ in range(50):  # before Linux 5.14: kill what is listed until nothing is (forks race us)
        pids = []
        for root, _dirs, _files in os.walk(path):
            pids += _procs(root)
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def remove_cgroup(path: str, wait: float = 1.0) -> bool:
    """rmdir cgroup `path` and its children (each must be empty); True when it is gone."""
    deadline = time.monotonic() + wait
    while True:
        try:
            for root, dirs, _files in os.walk(path, topdown=False):
                for d in dirs:
                    try:
                        os.rmdir(os.path.join(root, d))
                    except FileNotFoundError:
                        pass
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.01)  # killed processes leave their cgroup a moment after the signal


def remove_stale_cgroups(base: str) -> int:
    """Remove the run cgroups of managers that are gone (killed before the watchdog could)."""
    n = 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(PREFIX) or not name[len(PREFIX):].isdigit():
            continue
        pid = int(name[len(PREFIX):])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        path = os.path.join(base, name)
        kill_cgroup(path)
        if remove_cgroup(path):
            n += 1
    return n


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------- markers

def marked(value_prefix: str) -> list[int]:
    """Pids of processes whose environment has MARKER=<value starting with value_prefix>."""
    needle = f"{MARKER}={value_prefix}".encode()
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        for item in env.split(b"\0"):
            if item.startswith(needle) and (item == needle or item[len(needle):len(needle) + 1] in (b".", b"")):
                out.append(int(d))
                break
    return out


def kill_marked(value_prefix: str) -> int:
    pids = marked(value_prefix)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return len(pids)


def children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    return out


def set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------- the manager's side

class Descendants:
    """The manager's record of its workers' descendants (one per run)."""

    def __init__(self):
        self.run = f"{os.getpid()}-{os.urandom(3).hex()}"
        self.cgroup: str | None = None  # this run's cgroup folder, when cgroups are used
        self.mechanism = "none"
        self.known: set[int] = set()    # pids we spawned ourselves (workers, watchdog)
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def start(self) -> str:
        """Pick the mechanism; returns a one-line description for the log."""
        base = cgroup2_base() if os.environ.get("PASSENGER_LITE_CGROUP", "auto") != "off" else None
        if base is not None:
            path = os.path.join(base, f"{PREFIX}{os.getpid()}")
            try:
                os.mkdir(path, 0o755)
                self.cgroup = path
                self.mechanism = "cgroup"
                removed = remove_stale_cgroups(base)  # leftovers of runs killed with their watchdog
                return f"workers' processes are tracked in cgroup {path}" + (
                    f" ({removed} stale cgroup(s) of killed runs removed)" if removed else "")
            except FileExistsError:
                kill_cgroup(path)
                if remove_cgroup(path):
                    return self.start()
            except OSError:
                pass
        if set_subreaper():
            self.mechanism = "subreaper"
            return "workers' processes are tracked as a child subreaper (no writable cgroup v2 here)"
        self.mechanism = "none"
        return "warning: neither a cgroup nor a subreaper: a worker's daemons that call setsid may outlive it"

    def watchdog_args(self) -> list[str]:
        """What the watchdog needs to clean up after a SIGKILL of the manager."""
        return ["--cgroup", self.cgroup] if self.cgroup else ["--marker", self.run]

    def worker_cgroup(self, seq: int) -> str | None:
        """Make the cgroup folder of worker `seq`; None when cgroups are not used."""
        if self.cgroup is None:
            return None
        path = os.path.join(self.cgroup, f"w{seq}")
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            log.warning("cannot make cgroup %s: %s", path, e.strerror)
            return None
        return path

    def marker(self, seq: int) -> str:
        return f"{self.run}.{seq}"

    def spawn_kwargs(self, kw: dict, cgroup: str | None) -> dict:
        """create_subprocess_exec arguments that put the worker in `cgroup` before it runs: the
        child joins it itself (no window in which it could fork outside), as root, so a user
        switch (`user=` of the standard loop, or a preexec_fn) moves after it."""
        if cgroup is None:
            return kw
        kw = dict(kw)
        given = then = kw.pop("preexec_fn", None)
        if "user" in kw:
            uid, gid, groups = kw.pop("user"), kw.pop("group"), list(kw.pop("extra_groups", ()))

            def switch_user() -> None:
                if given is not None:
                    given()
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
            then = switch_user
        kw["preexec_fn"] = self.preexec(cgroup, then)
        return kw

    def preexec(self, cgroup: str | None, then=None):
        """A preexec_fn for the worker: join its cgroup (before any user switch), then `then`."""
        procs = os.path.join(cgroup, "cgroup.procs").encode() if cgroup else None

        def child() -> None:
            if procs is not None:
                try:  # a failure here would fail the spawn; the worker still has its marker
                    fd = os.open(procs, os.O_WRONLY)
                    try:
                        os.write(fd, b"0")
                    finally:
                        os.close(fd)
                except OSError:
                    pass
            if then is not None:
                then()
        return child

    def worker_ended(self, seq: int, cgroup: str | None) -> None:
        """The worker's main process is gone: so goes everything it started."""
        if cgroup is not None:
            kill_cgroup(cgroup)
            self._remove_later(cgroup, 0)
        elif self.mechanism == "subreaper":
            kill_marked(self.marker(seq))
        self.reap()

    def _remove_later(self, cgroup: str, tries: int) -> None:
        if remove_cgroup(cgroup, wait=0) or tries > 100:
            return
        try:  # killed processes leave the cgroup a moment after the signal; never block the loop
            asyncio.get_running_loop().call_later(0.05, self._remove_later, cgroup, tries + 1)
        except RuntimeError:
            pass

    def reap(self) -> None:
        """Collect the exit status of orphans reparented to us (subreaper), so no zombie stays."""
        if self.mechanism != "subreaper":
            return
        for p in children_of(os.getpid()):
            if p in self.known:
                continue
            try:
                with open(f"/proc/{p}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if state == "Z":
                    os.waitpid(p, os.WNOHANG)
            except (OSError, ChildProcessError, IndexError):
                pass

    def stop(self) -> None:
        """The manager ends (its workers are stopped): nothing they started may stay."""
        if self.cgroup is not None:
            kill_cgroup(self.cgroup)
            remove_cgroup(self.cgroup)
        elif self.mechanism == "subreaper":
            kill_marked(self.run)
            orphans = [p for p in children_of(os.getpid()) if p not in self.known]
            for p in orphans:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            for p in orphans:
                try:
                    os.waitpid(p, 0)
                except (OSError, ChildProcessError):
                    pass
