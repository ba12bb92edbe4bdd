"""Runtime directories: control socket, lock, worker sockets, made so no other user can reach or
replace them.

Layout (BASE is /run/passenger-lite for root; otherwise $XDG_RUNTIME_DIR/passenger-lite, else
~/.local/state/passenger-lite; /tmp/passenger-lite-UID only when none of those is usable):

    BASE/                          ours, 0700
    BASE/<hash>/                   0700: `control.sock`, `lock` (hash of the config file's path)
    WBASE/<hash>-w-<random>/       this run's worker sockets; 0711 when root, else 0700
    WBASE/<hash>-w-<random>/<n>/   one folder per worker, 0700, owned by the worker's user, holding
                                   its socket `sock`; once the worker answers, the folder is handed
                                   back to us (root, 0700), so the worker cannot swap its socket for a
                                   symlink to some other socket that root would then connect to

WBASE is BASE, except for root: workers running as other users must pass through it, so it is
BASE-workers (/run/passenger-lite-workers), 0711, and BASE with the control sockets stays 0700.

A run's folders go when it ends: `stop` and SIGTERM remove them (Instance.unlock); after a
SIGKILL the watchdog does (remove_run), and any start removes those of runs whose lock nobody
holds any more (remove_stale). The lock file is removed while held, so a manager that locked it
checks afterwards that it still is the file at that path, and otherwise starts over.
This module is also imported by the watchdog program (by path): standard library only.

Every folder is opened with O_NOFOLLOW|O_DIRECTORY and checked on that descriptor (a real
directory, owned by us) before it is chmod-ed or chown-ed through the same descriptor: nothing is
chown-ed through a path, no name in /tmp is trusted, and the folders above BASE must not be
writable by others (unless sticky). Passenger's CVE-2016-10345, CVE-2017-16355 and
CVE-2018-12026/12029 are the kind of thing this prevents.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes
SOCKET_NAME = "sock"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RuntimeDirError(Exception):
    pass


def _shared() -> bool:
    """Started as root: workers run as other users, who must be able to pass through BASE."""
    return os.geteuid() == 0


def _open_dir(path: Path | str, dir_fd: int | None = None) -> int:
    try:
        return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise RuntimeDirError(f"{path} is not a directory (a symlink?); refusing to use it ({e.strerror})") from None


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    """Create `path` (or take the existing one) as our own directory with exactly `mode`."""
    uid = os.geteuid()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = _open_dir(path)
    try:
        st = os.fstat(fd)
        if st.st_uid != uid:
            raise RuntimeDirError(f"{path} belongs to uid {st.st_uid}, not to us (uid {uid}); refusing to use it")
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return path


def ensure_private_dir(path: Path) -> Path:
    return ensure_dir(path, 0o700)


def _safe_ancestors(path: Path) -> str | None:
    """Why a folder above `path` would let another user replace it, or None."""
    uid = os.geteuid()
    for folder in path.parents:
        st = os.stat(folder)
        if st.st_uid not in (0, uid):
            return f"{folder} belongs to uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"{folder} is writable by others ({stat.filemode(st.st_mode)})"
    return None


def _candidates() -> list[Path]:
    out = []
    if _shared():  # root: in a folder its workers' users can pass through (not /root, /run/user/0)
        if os.path.isdir("/run"):
            out.append(Path("/run/passenger-lite"))
    else:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg and os.path.isdir(xdg):
            out.append(Path(xdg) / "passenger-lite")
        home = os.path.expanduser("~")
        if home and home != "~" and os.path.isdir(home):
            out.append(Path(home) / ".local" / "state" / "passenger-lite")
    out.append(Path(tempfile.gettempdir()) / f"passenger-lite-{os.geteuid()}")
    return out


def base_dir(workers: bool = False) -> Path:
    """BASE, or with `workers` WBASE (see above)."""
    problems = []
    shared = workers and _shared()
    for c in _candidates():
        if shared:
            c = c.with_name(c.name + "-workers")
        if len(str(c)) > MAX_SOCKET_PATH - 40:
            continue
        try:
            if not c.parent.exists():
                c.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            why = _safe_ancestors(c)
            if why:
                problems.append(f"{c}: {why}")
                continue
            return ensure_dir(c, 0o711 if shared else 0o700)
        except (OSError, RuntimeDirError) as e:
            problems.append(f"{c}: {e}")
    raise RuntimeDirError("no usable runtime directory: " + "; ".join(problems))


def _digest(config_path: Path) -> str:
    return hashlib.sha256(str(Path(config_path).resolve()).encode()).hexdigest()[:12]


def instance_dir(config_path: Path) -> Path:
    """The directory of the manager for this config file (same for every CLI command). Only the
    manager creates it (Instance.lock): a `status` or `stop` must not leave one behind."""
    return base_dir() / _digest(config_path)


def control_socket(config_path: Path) -> Path:
    return instance_dir(config_path) / "control.sock"


def find_instance_dir(config_path: Path) -> Path | None:
    """The folder of a manager of ours running for this config file, or None; for the control
    commands, which must create nothing (not even a /tmp/passenger-lite-UID) to ask."""
    for c in _candidates():
        d = c / _digest(config_path)
        try:
            st = os.stat(d, follow_symlinks=False)
        except OSError:
            continue
        if (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not _safe_ancestors(d)
                and (d / "control.sock").exists()):
            return d
    return None


class WorkerDirs:
    """This run's worker socket folders: one per worker, owned by its user until it answers."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = _open_dir(path)
        self._names: dict[str, tuple] = {}  # folder name -> (the worker using it, its pool's workers)

    def make(self, name: str, user=None) -> str:
        """Create folder `name` for a worker running as `user` (None: as us); its socket path."""
        os.mkdir(name, 0o700, dir_fd=self._fd)  # our 0700/0711 parent: nobody else can have made it
        fd = _open_dir(name, self._fd)
        try:
            os.fchmod(fd, 0o700)
            if user is not None and (user.uid, user.gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, user.uid, user.gid)
        finally:
            os.close(fd)
        return str(self.path / name / SOCKET_NAME)

    def track(self, name: str, worker, workers: list) -> None:
        """`name` is `worker`'s folder while it is in `workers` (its pool's list) and has not exited."""
        self._names[name] = (worker, workers)

    def seal(self, name: str, user) -> None:
        """The worker answers on its socket: take its folder back (ours, 0700), so the worker can
        no longer replace the socket, then check that what is there is a socket of that user."""
        if user is None or user.uid == os.geteuid():
            return
        fd = _open_dir(name, self._fd)
        try:
            os.fchown(fd, os.geteuid(), os.getegid())
            os.fchmod(fd, 0o700)
            try:
                st = os.stat(SOCKET_NAME, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise RuntimeDirError(f"its socket {self.path / name / SOCKET_NAME} is gone") from None
        finally:
            os.close(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != user.uid:
            raise RuntimeDirError(f"{self.path / name / SOCKET_NAME} is not a socket of user {user.name} "
                                  f"({stat.filemode(st.st_mode)}, uid {st.st_uid}); refusing to connect to it")

    def prune(self) -> None:
        """Remove the folders of workers that are gone."""
        for name, (w, workers) in list(self._names.items()):
            if w.exit_code is not None or not any(x is w for x in workers):
                del self._names[name]
                self.remove(name)

    def remove(self, name: str) -> None:
        shutil.rmtree(name, ignore_errors=True, dir_fd=self._fd)  # fd-based: symlink-safe

    def close(self) -> None:
        """Close our handle on the run folder (Instance.unlock removes it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Instance:
    """The lock and folders of one running manager."""

    def __init__(self, config_path: Path):
        self.dir = instance_dir(config_path)
        self.control = self.dir / "control.sock"
        self._lock_fd: int | None = None
        self.workers: Path | None = None  # this run's worker socket folders (WorkerDirs)

    def lock(self) -> None:
        for attempt in range(40):
            fd = self._try_lock(last=attempt == 39)
            if fd is not None:
                break
            time.sleep(0.025)  # a cleaner held it for a moment, or removed it under us
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        base = base_dir(workers=True)
        prefix = f"{self.dir.name}-w-"
        for old in list(base.glob(prefix + "*")) + list(self.dir.glob("w-*")):  # runs that were killed
            shutil.rmtree(old, ignore_errors=True)
        remove_stale(self.dir.name)
        self.workers = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        ensure_dir(self.workers, 0o711 if _shared() else 0o700)

    def _try_lock(self, last: bool) -> int | None:
        """The lock's descriptor, or None to try again; raises when another manager runs."""
        ensure_private_dir(self.dir)
        try:
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # the folder was removed between the two steps
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if last or (pid.isdigit() and _alive(int(pid))):  # else a cleaner holds it for a moment
                raise RuntimeDirError(f"passenger-lite is already running for this config (pid {pid or '?'})") from None
            return None
        if not _same_file(fd, self.dir / "lock"):  # removed by its last owner or a cleaner: not ours
            os.close(fd)
            return None
        return fd

    def unlock(self) -> None:
        if self.workers is not None:
            shutil.rmtree(self.workers, ignore_errors=True)  # fd-based: symlinks in it are not followed
            self.workers = None
        try:
            self.control.unlink()
        except OSError:
            pass
        if self._lock_fd is not None:
            _remove_instance_dir(self.dir)  # the lock file goes while we still hold it
            os.close(self._lock_fd)
            self._lock_fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _remove_instance_dir(d: Path) -> None:
    """Remove an instance folder: only the names we put there; a folder with anything else stays."""
    for name in ("control.sock", "lock"):
        try:
            os.unlink(d / name)
        except OSError:
            pass
    try:
        os.rmdir(d)
    except OSError:
        pass


def _held(d: Path) -> bool:
    """Is the lock in instance folder `d` held by a running manager? If not, `d` is removed."""
    try:
        fd = os.open(d / "lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:  # never locked (made by `status` or `stop`); a starter retries
        _remove_instance_dir(d)
        return False
    except OSError:
        return True  # not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return True
    try:  # ours now: nobody runs there; remove it while holding the lock
        if _same_file(fd, d / "lock"):
            _remove_instance_dir(d)
    finally:
        os.close(fd)
    return False


def remove_stale(skip: str = "") -> None:
    """Remove the folders of runs that ended without removing them (SIGKILL, power loss)."""
    try:
        base = base_dir()
        wbase = base_dir(workers=True)
    except RuntimeDirError:
        return
    for d in base.iterdir():
        if d.name == skip or not d.is_dir() or d.is_symlink() or len(d.name) != 12:
            continue
        _held(d)
    for w in wbase.glob("*-w-*"):
        owner = w.name.split("-w-", 1)[0]
        if owner != skip and not (base / owner).exists() and w.is_dir() and not w.is_symlink():
            shutil.rmtree(w, ignore_errors=True)


def remove_run(workers_dir: str | None, instance_dir: str | None) -> None:
    """The watchdog, after its manager ended: remove the run's folders unless a new manager for
    the same config holds the lock by now (then they are its own or it removed them already)."""
    if instance_dir:
        d = Path(instance_dir)
        for _ in range(20):  # the dead manager's lock is released when its last descriptor closes
            if not _held(d):
                break
            time.sleep(0.05)
        else:
            return
    if workers_dir:
        shutil.rmtree(workers_dir, ignore_errors=True)
