"""Private runtime directories: control socket, lock, worker sockets.

Layout: BASE/<hash of the config file's path>/ holds `control.sock`, `lock` and one folder per
run with a random name (`w-XXXXXXXX/`) for the worker sockets. Every directory is created 0700
and checked (a real directory, not a symlink, owned by us, no group/other access) before use, so
no other user can reach or replace a socket (Passenger's CVE-2016-10345, CVE-2017-16355 are the
kind of thing this prevents). BASE is $XDG_RUNTIME_DIR/passenger-lite, /run/passenger-lite for
root, else ~/.local/state/passenger-lite; /tmp/passenger-lite-UID only when none of those is
usable (and then with the same checks).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
from pathlib import Path

MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes


class RuntimeDirError(Exception):
    pass


def ensure_private_dir(path: Path) -> Path:
    uid = os.getuid()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"{path} is not a directory (a symlink?); refusing to use it")
    if st.st_uid != uid:
        raise RuntimeDirError(f"{path} belongs to uid {st.st_uid}, not to us (uid {uid}); refusing to use it")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def _candidates() -> list[Path]:
    out = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        out.append(Path(xdg) / "passenger-lite")
    if os.getuid() == 0 and os.path.isdir("/run"):
        out.append(Path("/run/passenger-lite"))
    home = os.path.expanduser("~")
    if home and home != "~" and os.path.isdir(home):
        out.append(Path(home) / ".local" / "state" / "passenger-lite")
    out.append(Path(tempfile.gettempdir()) / f"passenger-lite-{os.getuid()}")
    return out


def base_dir() -> Path:
    problems = []
    for c in _candidates():
        if len(str(c)) > MAX_SOCKET_PATH - 40:
            continue
        try:
            if not c.parent.exists():
                c.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            return ensure_private_dir(c)
        except (OSError, RuntimeDirError) as e:
            problems.append(f"{c}: {e}")
    raise RuntimeDirError("no usable runtime directory: " + "; ".join(problems))


def instance_dir(config_path: Path) -> Path:
    """The directory of the manager for this config file (same for every CLI command)."""
    digest = hashlib.sha256(str(Path(config_path).resolve()).encode()).hexdigest()[:12]
    return ensure_private_dir(base_dir() / digest)


def control_socket(config_path: Path) -> Path:
    return instance_dir(config_path) / "control.sock"


class Instance:
    """The lock and folders of one running manager."""

    def __init__(self, config_path: Path):
        self.dir = instance_dir(config_path)
        self.control = self.dir / "control.sock"
        self._lock_fd: int | None = None
        self.workers: Path | None = None

    def lock(self) -> None:
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise RuntimeDirError(f"passenger-lite is already running for this config (pid {pid or '?'})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        for old in self.dir.glob("w-*"):  # worker folders of runs that were killed
            _remove_tree(old)
        self.workers = Path(tempfile.mkdtemp(prefix="w-", dir=self.dir))
        os.chmod(self.workers, 0o700)

    def unlock(self) -> None:
        if self.workers is not None:
            _remove_tree(self.workers)
            self.workers = None
        try:
            self.control.unlink()
        except OSError:
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _remove_tree(path: Path) -> None:
    try:
        for p in path.iterdir():
            try:
                p.unlink()
            except OSError:
                pass
        path.rmdir()
    except OSError:
        pass
