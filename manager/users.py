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
import re
import shutil
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import AppConfig, ConfigError, Problem, Site, key_name, line_of, read_yaml
from .spawnfail import StartFailure


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


def blocked(user: WorkerUser, argv: list[str], cwd: str, env: dict[str, str], sock: str | None) -> str | None:
    """Why `user` could not run this worker: its folder (read), program (execute), the files its
    command names (read) and its socket folder (read/write; None: not made yet, as for `check`);
    None when it can."""
    checks = [(cwd, 5)]
    exe = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
    if exe:
        checks.append((exe, 1))
    checks += [(a, 4) for a in argv[1:] if os.path.isabs(a) and os.path.isfile(a)]
    if sock is not None:
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
    if not why:  # what the app cannot boot without (check reports these too, and the rest)
        why = next((f"{w} ({what})" for path, bits, what, fatal in framework_paths(app) if fatal
                    for w in [unreachable(user, path, bits)] if w), None)
    if why:
        message = f"the workers run as {user} ({user.why}), and {why}"
        raise StartFailure(
            app.name, "access", message, command=" ".join(spec.argv), cwd=spec.cwd,
            hints=[f"{message[0].upper()}{message[1:]}.",  # the page shows hints, not the message
                   f"Let {user.name} through (e.g. `chmod o+x` on that folder, or give it to a group "
                   f"{user.name} is in), or move the app to a folder it can read.",
                   "Or choose the user with the app's `user:` (and `group:`) key; `user: root` runs the "
                   "app as root."])


# ----------------------------------------------------------------------------- check and start

_SQLITE_NAME_RE = re.compile(r"""['"]([\w./-]+\.(?:sqlite3?|db))['"]""")


def framework_paths(app: AppConfig) -> list[tuple[str, int, str, bool]]:
    """(path, bits, what for, fatal) a framework needs besides what the spawn checks: what a
    Rails app reads and writes, a Python app's entry module and its virtualenv's base Python, the
    SQLite file of a Django project (and its folder, where SQLite writes its journal). Fatal: the
    app cannot boot without it; else it fails later. Missing files are left out (their folder
    must be writable when the framework creates them)."""
    root = Path(app.root)
    out: list[tuple[str, int, str, bool]] = []
    if app.type == "ruby-rack" and (root / "config" / "application.rb").is_file():  # Rails
        if (root / "config" / "master.key").is_file():
            out.append((str(root / "config" / "master.key"), 4, "Rails reads it to decrypt its credentials", True))
        for name, what in (("log", "Rails writes its log files there"),
                           ("tmp", "Rails writes its cache and pid files there")):
            folder = root / name
            if folder.is_dir():
                out.append((str(folder), 3, what, False))
                out += [(str(f), 2, what, False) for f in sorted(folder.glob("*.log"))]
            elif not folder.exists():
                out.append((str(root), 3, f"Rails creates {name}/ there", False))
    if app.type in ("python-wsgi", "python-asgi") and app.entry:
        module = app.entry.partition(":")[0]
        rel = Path(*module.split("."))
        for cand in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
            if cand.is_file():
                out.append((str(cand), 4, "the app's entry module", True))
                break
        home = _venv_home(app.python)
        if home:
            out.append((home, 5, "the Python its virtualenv was made from (pyvenv.cfg `home`)", True))
        for db in _sqlite_files(root, module):
            if db.exists():
                out.append((str(db), 6, "the app's SQLite database", False))
            out.append((str(db.parent), 3, "SQLite writes its journal beside the database", False))
    return out


def _venv_home(python: str | None) -> str | None:
    """The base Python folder of the virtualenv `python` belongs to (its pyvenv.cfg `home`)."""
    if not python or os.sep not in python:
        return None
    cfg = Path(python).absolute().parent.parent / "pyvenv.cfg"
    try:
        for line in cfg.read_text(encoding="utf-8", errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "home" and value.strip():
                return value.strip()
    except OSError:
        pass
    return None


def _sqlite_files(root: Path, module: str) -> list[Path]:
    """The SQLite files of a Django project: those its settings name (relative to the project
    root, as `BASE_DIR / 'db.sqlite3'` is), else a db.sqlite3 in the root."""
    found = []
    pkg = module.split(".")[0]
    settings = root / pkg / "settings.py"
    try:
        text = settings.read_text(encoding="utf-8", errors="replace") if settings.is_file() else ""
    except OSError:
        text = ""
    if "django.db.backends.sqlite3" in text:
        found = [root / m for m in dict.fromkeys(_SQLITE_NAME_RE.findall(text))
                 if not m.startswith("django.") and not os.path.isabs(m)]
    if not found and (root / "db.sqlite3").is_file():
        found = [root / "db.sqlite3"]
    return found


def _fix(user: WorkerUser, app: AppConfig, path: str) -> str:
    if app.user:
        return (f"give {path} to {user.name} (or let it in with a group or `chmod`), or choose another "
                f"`user:` for the app")
    if "default_user" in user.why:
        return (f"give the app to the user that should run it (`chown -R USER {app.root}`: its workers then "
                f"run as USER), or set the app's `user:`")
    return f"give {path} to {user.name} (`chown {user.name}` or a group it is in), or set the app's `user:`"


def access_problems(site: Site, policy: UserPolicy, registry) -> list[tuple[int, str, bool]]:
    """What each app's workers could not reach, as its user, with the fix: (app index, message,
    fatal). Fatal: the spawn itself refuses (the folder, interpreter, loader, entry files);
    the rest (a framework's files and the folders it writes) would fail later, in the app."""
    from passenger_lite.spawners.base import WorkerContext

    out = []
    for i, app in enumerate(site.apps):
        try:
            user = policy.for_app(app)
        except LookupError as e:
            out.append((i, str(e), True))
            continue
        if user is None or user.uid == 0:
            continue
        checks: list[tuple[str, int, str, bool]] = []
        try:
            sp = registry.get(app.type)
            spec = sp.worker_spec(WorkerContext(app=app, socket=os.path.join(site.path.parent, "check.sock"),
                                                port=None, environment=site.config.environment, worker_id=1))
            why = blocked(user, spec.argv, spec.cwd, spec.env, None)
            if why:
                checks.append(("", 0, why, True))
        except Exception:  # noqa: BLE001 - a plugin's worker_spec fails at start, with its own error
            pass
        for path, bits, what, fatal in framework_paths(app):
            why = unreachable(user, path, bits)
            if why:
                checks.append((path, bits, f"{why} ({what})", fatal))
        seen = set()
        for _, _, why, fatal in checks:
            where = why.split(": ", 1)[0].rsplit(" ", 1)[-1]  # the file or folder in the way
            if where in seen:  # one line per thing in the way
                continue
            seen.add(where)
            out.append((i, f"its workers run as {user} ({user.why}), and {why}; fix: {_fix(user, app, where)}",
                        fatal))
    return out


def access_report(site: Site, registry) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) for `check` and `start`: access_problems() with file lines."""
    policy = UserPolicy.for_site(site)
    if not policy.switching:
        return [], []
    found = access_problems(site, policy, registry)
    errors = _with_lines(site, [(("apps", i), m) for i, m, fatal in found if fatal])
    warnings = _with_lines(site, [(("apps", i), m) for i, m, fatal in found if not fatal])
    return errors, warnings
