"""Which user each app's workers run as, and whether that user can reach what it needs.

Started as root, the manager runs each app's workers as (Passenger's rules):
  1. the app's `user:` (and `group:`), when given; `user: root` is the only way to run as root;
  2. else the owner of the app's root folder;
  3. else, when that owner is root (or has no account), the site's `default_user` (nobody).
The group is `group:` when given, else the user's primary group; the supplementary groups are
the user's (os.getgrouplist, as initgroups would set them). Workers get that user's HOME, USER
and LOGNAME (unless the app's `env:` sets them).

Started as anyone else, everything runs as that user, and the manager says so once.

Unknown users and groups are configuration errors naming the key (checked when started as
root; elsewhere those keys are not used). Before a worker starts, `unreachable()` checks that its
user can reach the app's folder, interpreter and socket folder, so a root-owned 0700 folder on
the way gives a clear error page instead of a PermissionError deep inside the app.
"""
from __future__ import annotations

import asyncio
import functools
import grp
import os
import pwd
import shutil
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import AppConfig, ConfigError, Problem, Site, key_name, line_of, read_yaml
from .worker import StartFailure


@dataclass(frozen=True)
class WorkerUser:
    """Who a worker runs as (what Worker.start passes to the subprocess)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    group: str
    why: str = field(default="", compare=False)  # how it was chosen, for error messages

    def __str__(self) -> str:
        return f"{self.name}:{self.group}"

    def spawn_kwargs(self, loop) -> dict:
        """create_subprocess_exec arguments that start the process as this user. The standard
        loop does it in C (user=, group=, extra_groups=); uvloop takes none of those, so there
        the forked child calls _become before exec."""
        if isinstance(loop, asyncio.BaseEventLoop):
            return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}
        return {"preexec_fn": functools.partial(_become, self.uid, self.gid, self.groups)}

    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def can(self, st: os.stat_result, bits: int) -> bool:
        """May this user read (4) / write (2) / search (1) a file with this stat (mode bits only)?"""
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            mode = st.st_mode >> 6
        elif st.st_gid == self.gid or st.st_gid in self.groups:
            mode = st.st_mode >> 3
        else:
            mode = st.st_mode
        return mode & bits == bits


def _become(uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """In the forked child, before exec: groups first, then gid, then uid (for good)."""
    os.setgroups(list(groups))
    os.setgid(gid)
    os.setuid(uid)


def _passwd(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if name.isdigit():
            return pwd.getpwuid(int(name))
        raise


def _group(name: str) -> grp.struct_group:
    try:
        return grp.getgrnam(name)
    except KeyError:
        if name.isdigit():
            return grp.getgrgid(int(name))
        raise


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def worker_user(pw: pwd.struct_passwd, group: str | None = None) -> WorkerUser:
    gid = _group(group).gr_gid if group else pw.pw_gid
    try:
        groups = tuple(os.getgrouplist(pw.pw_name, gid))
    except OSError:
        groups = (gid,)
    return WorkerUser(pw.pw_name, pw.pw_uid, gid, groups, pw.pw_dir or "/", _group_name(gid))


def current_user() -> WorkerUser:
    uid, gid = os.geteuid(), os.getegid()
    try:
        pw = pwd.getpwuid(uid)
        name, home = pw.pw_name, pw.pw_dir
    except KeyError:
        name, home = str(uid), os.environ.get("HOME", "/")
    return WorkerUser(name, uid, gid, tuple(os.getgroups()), home, _group_name(gid))


class UserPolicy:
    """The users of one site's apps. `switching` is False when not started as root."""

    def __init__(self, site: Site, switching: bool):
        self.site = site
        self.switching = switching
        self.me = current_user()

    @classmethod
    def for_site(cls, site: Site) -> "UserPolicy":
        """The policy for `site`; raises ConfigError (file:line: key) for unknown users/groups."""
        switching = os.geteuid() == 0
        if switching:
            problems = list(_check(site))
            if problems:
                raise ConfigError(site.path, _with_lines(site, problems))
        return cls(site, switching)

    def for_app(self, app: AppConfig) -> WorkerUser | None:
        """Who `app`'s next worker runs as; None: as the manager itself. Raises LookupError when
        a user or group named in the config no longer exists."""
        if not self.switching:
            return None
        if app.user:
            why = "the app's `user:`"
            try:
                pw = _passwd(app.user)
            except KeyError:
                raise LookupError(f"user {app.user!r} (`user:`) does not exist") from None
        else:
            pw = None
            owner = None
            try:
                owner = os.stat(app.root).st_uid
                if owner != 0:
                    pw = pwd.getpwuid(owner)
            except (OSError, KeyError):  # no account for the owner: Passenger falls back to the default too
                pw = None
            why = f"the owner of {app.root}"
            if pw is None:
                default = self.site.config.default_user
                why = (f"default_user, as {app.root} belongs to "
                       f"{'root' if owner == 0 else f'uid {owner} (no such user)'}")
                try:
                    pw = _passwd(default)
                except KeyError:
                    raise LookupError(f"default_user {default!r} does not exist") from None
        try:
            return replace(worker_user(pw, app.group), why=why)
        except KeyError:
            raise LookupError(f"group {app.group!r} (`group:`) does not exist") from None

    def summary(self) -> str | None:
        """The one line the manager logs at start when it does not switch users."""
        if self.switching:
            return None
        me = self.me
        line = (f"not started as root: every app's workers run as {me.name} (uid {me.uid}), "
                f"like the manager")
        named = [a.name for a in self.site.apps if a.user or a.group]
        if named:
            line += f"; `user:`/`group:` of {', '.join(named)} ignored"
        return line


def _check(site: Site):
    """(loc, message) for every user and group the config names that does not exist."""
    default = site.config.default_user
    try:
        if _passwd(default).pw_uid == 0:
            yield ("default_user",), (f"{default!r} is root; apps run as root only when they say `user: root`; "
                                      "choose an unprivileged user (default: nobody)")
    except KeyError:
        yield ("default_user",), f"unknown user {default!r}"
    for i, app in enumerate(site.apps):
        if app.user:
            try:
                _passwd(app.user)
            except KeyError:
                yield ("apps", i, "user"), f"unknown user {app.user!r}"
        if app.group:
            try:
                _group(app.group)
            except KeyError:
                yield ("apps", i, "group"), f"unknown group {app.group!r}"


def _with_lines(site: Site, problems) -> list[Problem]:
    try:
        data = read_yaml(Path(site.path))
    except ConfigError:
        data = None
    out = []
    for loc, message in problems:
        if data is not None and loc[0] == "apps":  # site.apps keep the file's order; match by name to be sure
            name = site.apps[loc[1]].name
            idx = next((j for j, a in enumerate(data.get("apps") or []) if isinstance(a, dict) and a.get("name") == name),
                       loc[1])
            loc = ("apps", idx) + loc[2:]
        key = key_name(data, loc) if data is not None else ".".join(str(p) for p in loc)
        out.append(Problem(key, message, line_of(data, loc) if data is not None else None))
    return out


# ----------------------------------------------------------------------------- can it reach that?


def _describe(path: str, st: os.stat_result) -> str:
    def name(f, i):
        try:
            return f(i)[0]
        except KeyError:
            return str(i)

    return (f"{path} is {stat.filemode(st.st_mode)} {name(pwd.getpwuid, st.st_uid)}:"
            f"{name(grp.getgrgid, st.st_gid)}")


def unreachable(user: WorkerUser, path: str, bits: int) -> str | None:
    """Why `user` cannot reach `path` with `bits` (4 read, 2 write, 1 search/execute), or None.
    Every folder on the way, as written and with symlinks resolved, needs search permission."""
    if user.uid == 0:
        return None
    p = os.path.abspath(path)
    for candidate in dict.fromkeys((p, os.path.realpath(p))):
        parts = Path(candidate).parts
        for i in range(1, len(parts)):
            folder = os.path.join(*parts[:i])
            try:
                st = os.stat(folder)
            except OSError:
                return None  # missing: the spawn reports that itself
            if not user.can(st, 1):
                return f"user {user.name} cannot enter folder {folder}: {_describe(folder, st)}"
        try:
            st = os.stat(candidate)
        except OSError:
            return None
        if not user.can(st, bits):
            want = "/".join(w for b, w in ((4, "read"), (2, "write"), (1, "enter" if stat.S_ISDIR(st.st_mode)
                                                                        else "execute")) if bits & b)
            return f"user {user.name} cannot {want} {candidate}: {_describe(candidate, st)}"
    return None


def blocked(user: WorkerUser, argv: list[str], cwd: str, env: dict[str, str], sock: str) -> str | None:
    """Why `user` could not run this worker: its folder (read), program (execute), the files its
    command names (read) and its socket folder (read/write); None when it can."""
    checks = [(cwd, 5)]
    exe = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
    if exe:
        checks.append((exe, 1))
    checks += [(a, 4) for a in argv[1:] if os.path.isabs(a) and os.path.isfile(a)]
    checks.append((os.path.dirname(sock), 7))
    for path, bits in checks:
        why = unreachable(user, path, bits)
        if why:
            return why
    return None


def apply_user(spec, user: WorkerUser, app: AppConfig, sock: str) -> None:
    """Give a worker spec its user's HOME, USER and LOGNAME (unless the app's `env:` sets them),
    and check that the user can reach everything the worker needs; raises StartFailure if not."""
    for k, v in user.env().items():
        if k not in app.env:
            spec.env[k] = v
    if user.uid != os.geteuid() and "XDG_RUNTIME_DIR" not in app.env:
        spec.env.pop("XDG_RUNTIME_DIR", None)  # the manager's, not the worker user's
    why = blocked(user, spec.argv, spec.cwd, spec.env, sock)
    if why:
        message = f"the workers run as {user} ({user.why}), and {why}"
        raise StartFailure(
            app.name, "access", message, command=" ".join(spec.argv), cwd=spec.cwd,
            hints=[f"{message[0].upper()}{message[1:]}.",  # the page shows hints, not the message
                   f"Let {user.name} through (e.g. `chmod o+x` on that folder, or give it to a group "
                   f"{user.name} is in), or move the app to a folder it can read.",
                   "Or choose the user with the app's `user:` (and `group:`) key; `user: root` runs the "
                   "app as root."])
