"""Issue 7 item 4, unit level: the user rules (manager/users.py) and the runtime folders
(manager/runtimedir.py), on real files, real accounts (root, nobody) and real processes."""
from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from passenger_lite.manager import config as configmod
from passenger_lite.manager.config import ConfigError
from passenger_lite.manager.runtimedir import SOCKET_NAME, RuntimeDirError, WorkerDirs, ensure_dir
from passenger_lite.manager.users import UserPolicy, unreachable, worker_user

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="user switching needs root")
NOBODY = pwd.getpwnam("nobody")


def site_for(tmp_path: Path, apps: str, top: str = "") -> configmod.Site:
    p = tmp_path / "sites.yaml"
    p.write_text(top + "apps:\n" + apps)
    return configmod.load(p)


def app_dir(tmp_path: Path, name: str, uid: int = 0) -> Path:
    d = tmp_path / name
    d.mkdir()
    os.chown(d, uid, -1)
    return d


# ---------------------------------------------------------------------------- the rules


@root_only
def test_owner_then_default_user_then_explicit_user(tmp_path):
    app_dir(tmp_path, "mine")
    app_dir(tmp_path, "theirs", NOBODY.pw_uid)
    app_dir(tmp_path, "ghost", 54321)  # an owner without an account
    app_dir(tmp_path, "explicit")
    site = site_for(tmp_path, "  - {name: mine, root: mine, path: /m}\n"
                              "  - {name: theirs, root: theirs, path: /t}\n"
                              "  - {name: ghost, root: ghost, path: /g}\n"
                              "  - {name: explicit, root: explicit, user: root}\n")
    policy = UserPolicy.for_site(site)
    users = {a.name: policy.for_app(a) for a in site.apps}
    assert (users["mine"].uid, users["mine"].gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert "default_user" in users["mine"].why and "belongs to root" in users["mine"].why
    assert users["theirs"].uid == NOBODY.pw_uid and users["theirs"].why.startswith("the owner of")
    assert users["ghost"].uid == NOBODY.pw_uid and "uid 54321 (no such user)" in users["ghost"].why
    assert (users["explicit"].uid, users["explicit"].gid) == (0, 0)
    assert users["explicit"].groups == tuple(os.getgrouplist("root", 0))
    assert users["mine"].env() == {"HOME": NOBODY.pw_dir, "USER": "nobody", "LOGNAME": "nobody"}
    assert policy.summary() is None


@root_only
def test_group_key_sets_the_gid_and_the_supplementary_groups_follow_it(tmp_path):
    app_dir(tmp_path, "a")
    site = site_for(tmp_path, "  - {name: a, root: a, user: nobody, group: root}\n")
    u = UserPolicy.for_site(site).for_app(site.apps[0])
    assert (u.uid, u.gid, u.group) == (NOBODY.pw_uid, 0, "root")
    assert u.groups == tuple(os.getgrouplist("nobody", 0))


def test_not_root_runs_everything_as_oneself_and_says_which_keys_it_ignores(tmp_path):
    app_dir(tmp_path, "a", os.geteuid())
    app_dir(tmp_path, "b", os.geteuid())
    site = site_for(tmp_path, "  - {name: a, root: a, user: nobody}\n  - {name: b, root: b, path: /b}\n")
    policy = UserPolicy(site, switching=False)
    assert [policy.for_app(a) for a in site.apps] == [None, None]
    line = policy.summary()
    assert line.startswith("not started as root") and f"(uid {os.geteuid()})" in line
    assert "`user:`/`group:` of a ignored" in line


@root_only
def test_unknown_users_groups_and_a_root_default_user_are_config_errors_with_lines(tmp_path):
    app_dir(tmp_path, "a")
    site = site_for(tmp_path, "  - name: a\n    root: a\n    user: no-such-user-q\n    group: no-such-group-q\n",
                    top="default_user: root\n")
    with pytest.raises(ConfigError) as e:
        UserPolicy.for_site(site)
    text = str(e.value)
    path = tmp_path / "sites.yaml"
    assert f"{path}:1: default_user: 'root' is root" in text
    assert f"{path}:5: apps[0] (a).user: unknown user 'no-such-user-q'" in text
    assert f"{path}:6: apps[0] (a).group: unknown group 'no-such-group-q'" in text


@root_only
def test_a_user_removed_after_start_fails_the_spawn_not_the_manager(tmp_path):
    app_dir(tmp_path, "a")
    site = site_for(tmp_path, "  - {name: a, root: a, user: nobody}\n")
    policy = UserPolicy.for_site(site)
    site.apps[0].user = "gone-meanwhile-q"
    with pytest.raises(LookupError, match="'gone-meanwhile-q'"):
        policy.for_app(site.apps[0])


# ---------------------------------------------------------------------------- can it reach that?


@root_only
def test_unreachable_names_the_folder_in_the_way(open_dir):
    nobody = worker_user(NOBODY)
    locked = open_dir / "locked"
    locked.mkdir(mode=0o700)
    (locked / "app").mkdir()
    assert unreachable(nobody, str(locked / "app"), 5) == (
        f"user nobody cannot enter folder {locked}: {locked} is drwx------ root:root")
    assert unreachable(worker_user(pwd.getpwnam("root")), str(locked / "app"), 7) is None
    assert unreachable(nobody, str(open_dir), 5) is None
    assert unreachable(nobody, "/usr/bin/env", 1) is None


@root_only
def test_unreachable_checks_the_file_itself_and_symlink_targets(open_dir):
    nobody = worker_user(NOBODY)
    secret = open_dir / "secret.py"
    secret.write_text("x = 1\n")
    secret.chmod(0o600)
    assert unreachable(nobody, str(secret), 4) == f"user nobody cannot read {secret}: {secret} is -rw------- root:root"
    os.chown(secret, NOBODY.pw_uid, -1)
    assert unreachable(nobody, str(secret), 4) is None
    locked = open_dir / "locked"
    locked.mkdir(mode=0o700)
    (locked / "target").mkdir(mode=0o755)
    link = open_dir / "link"
    link.symlink_to(locked / "target")  # the link's own folders are fine, its target's are not
    assert unreachable(nobody, str(link), 5) == f"user nobody cannot enter folder {locked}: {locked} is drwx------ root:root"


# ---------------------------------------------------------------------------- the socket folders


class FakeWorker:  # compared by identity, as Worker is
    def __init__(self, pool, exit_code=None):
        self.pool, self.exit_code = pool, exit_code


@root_only
def test_worker_dirs_hand_a_folder_to_the_worker_and_take_it_back(tmp_path):
    run = ensure_dir(tmp_path / "run", 0o711)
    dirs = WorkerDirs(run)
    nobody = worker_user(NOBODY)
    sock = dirs.make("1", nobody)
    folder = run / "1"
    st = os.stat(folder)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o700)
    assert sock == str(folder / SOCKET_NAME)
    # the worker binds its socket (here: a socket chowned to nobody), then it is sealed
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock)
    os.chown(sock, NOBODY.pw_uid, NOBODY.pw_gid)
    dirs.seal("1", nobody)
    st = os.stat(folder)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    s.close()
    dirs.close()


@root_only
@pytest.mark.parametrize("plant", ["symlink", "file", "root-socket", "nothing"])
def test_seal_refuses_anything_but_a_socket_of_the_workers_user(tmp_path, plant):
    run = ensure_dir(tmp_path / "run", 0o711)
    dirs = WorkerDirs(run)
    nobody = worker_user(NOBODY)
    sock = Path(dirs.make("1", nobody))
    other = socket.socket(socket.AF_UNIX)
    if plant == "symlink":  # e.g. at root's control socket
        other.bind(str(tmp_path / "elsewhere.sock"))
        sock.symlink_to(tmp_path / "elsewhere.sock")
    elif plant == "file":
        sock.write_text("")
    elif plant == "root-socket":
        other.bind(str(sock))
    with pytest.raises(RuntimeDirError, match="is gone" if plant == "nothing" else "is not a socket of user nobody"):
        dirs.seal("1", nobody)
    other.close()
    dirs.close()


@root_only
def test_prune_removes_folders_of_gone_workers_without_following_their_symlinks(tmp_path):
    run = ensure_dir(tmp_path / "run", 0o711)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    dirs = WorkerDirs(run)
    pool = SimpleNamespace(workers=[])
    live, dead, failed = FakeWorker(pool), FakeWorker(pool, exit_code=0), FakeWorker(pool)
    pool.workers += [live, dead]  # `failed` never made it into the pool
    for name, w in (("1", live), ("2", dead), ("3", failed)):
        dirs.track(name, w, pool.workers)
        dirs.make(name, worker_user(NOBODY))
    (run / "2" / "evil").symlink_to(keep)
    dirs.prune()
    assert sorted(p.name for p in run.iterdir()) == ["1"]
    assert (keep / "precious").read_text() == "x"
    dirs.close()


def test_ensure_dir_refuses_symlinks_and_fixes_the_mode(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    ensure_dir(real, 0o700)
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o700
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(RuntimeDirError, match="not a directory"):
        ensure_dir(tmp_path / "link", 0o700)


@root_only
def test_ensure_dir_refuses_a_folder_someone_else_owns(tmp_path):
    d = tmp_path / "planted"
    d.mkdir()
    os.chown(d, NOBODY.pw_uid, -1)
    with pytest.raises(RuntimeDirError, match=f"belongs to uid {NOBODY.pw_uid}"):
        ensure_dir(d, 0o700)


# ---------------------------------------------------------------------------- spawning as the user


IDS = "import json, os; print(json.dumps([os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups())]))"


async def _ids_as(user) -> list:
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/env", "python3", "-c", IDS, stdout=asyncio.subprocess.PIPE, cwd="/",
        env={"PATH": "/usr/bin:/bin"}, **user.spawn_kwargs(asyncio.get_running_loop()))
    out, _ = await proc.communicate()
    return json.loads(out)


@root_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_both_event_loops_start_the_process_with_the_users_ids_and_groups(loop):
    user = worker_user(NOBODY, "root")  # nobody with gid 0: the groups must follow the gid given
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        got = uvloop.run(_ids_as(user))
    else:
        got = asyncio.run(_ids_as(user))
    assert got == [NOBODY.pw_uid, NOBODY.pw_uid, 0, sorted(set(os.getgrouplist("nobody", 0)))]


# ---------------------------------------------------------------------------- check: issue 12 item 3


def _registry_site(tmp_path: Path, apps: str) -> configmod.Site:
    from passenger_lite.spawners.registry import default_registry

    p = tmp_path / "sites.yaml"
    p.write_text("apps:\n" + apps)
    return configmod.load(p, default_registry())


def _problems(site):
    from passenger_lite.manager.users import access_problems
    from passenger_lite.spawners.registry import default_registry

    return access_problems(site, UserPolicy.for_site(site), default_registry())


@root_only
def test_framework_paths_of_rails_and_django_apps(open_dir):
    from passenger_lite.manager.users import framework_paths

    rails = open_dir / "rails"
    for rel in ("config/application.rb", "config/master.key", "config.ru", "log/production.log"):
        (rails / rel).parent.mkdir(parents=True, exist_ok=True)
        (rails / rel).write_text("")
    dj = open_dir / "dj"
    (dj / "mysite").mkdir(parents=True)
    (dj / "manage.py").write_text('os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")\n')
    (dj / "mysite" / "wsgi.py").write_text("application = None\n")
    (dj / "mysite" / "settings.py").write_text(
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': BASE_DIR / 'data/app.sqlite3'}}\n")
    (dj / "data").mkdir()
    site = _registry_site(open_dir, f"  - {{name: r, root: {rails}, ruby: /usr/bin/env}}\n"
                                    f"  - {{name: d, root: {dj}, path: /d, python: /usr/bin/python3}}\n")
    r, d = site.apps
    got = {(Path(p).relative_to(open_dir).as_posix(), bits, fatal) for p, bits, _, fatal in framework_paths(r)}
    assert got == {("rails/config/master.key", 4, True), ("rails/log", 3, False),
                   ("rails/log/production.log", 2, False), ("rails", 3, False)}  # tmp/ is missing: made in root
    got = {(Path(p).relative_to(open_dir).as_posix(), bits, fatal) for p, bits, _, fatal in framework_paths(d)}
    assert got == {("dj/mysite/wsgi.py", 4, True), ("dj/data", 3, False)}  # no database file yet: its folder
    (dj / "data" / "app.sqlite3").write_text("")
    assert ("dj/data/app.sqlite3", 6, False) in {(Path(p).relative_to(open_dir).as_posix(), b, f)
                                                  for p, b, _, f in framework_paths(d)}


@root_only
def test_access_problems_run_the_spawns_tests_as_the_apps_user_and_name_the_fix(open_dir):
    app = open_dir / "blog"
    app.mkdir()
    (app / "wsgi.py").write_text("def application(environ, start_response):\n    pass\n")
    (app / "db.sqlite3").write_text("")  # root's, 0644: nobody can read but not write it
    venv = open_dir / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /root/.pyenv/versions/3.11.7/bin\n")
    os.symlink("/usr/bin/python3", venv / "bin" / "python")
    site = _registry_site(open_dir, f"  - {{name: b, root: {app}, python: /usr/bin/python3}}\n"
                                    f"  - {{name: v, root: {app}, path: /v, python: {venv}/bin/python}}\n")
    got = _problems(site)
    b = [(m, fatal) for i, m, fatal in got if i == 0]
    assert [fatal for _, fatal in b] == [False, False]
    assert b[0][0].startswith("its workers run as nobody:") and f"(default_user, as {app} belongs to root)" in b[0][0]
    assert f"user nobody cannot read/write {app}/db.sqlite3" in b[0][0] and "(the app's SQLite database)" in b[0][0]
    assert f"user nobody cannot write/enter {app}: " in b[1][0] and "journal" in b[1][0]
    assert f"`chown -R USER {app}`" in b[0][0] and "`user:`" in b[0][0]
    v = [(m, fatal) for i, m, fatal in got if i == 1]
    assert any(fatal and "cannot enter folder /root" in m and "pyvenv.cfg" in m for m, fatal in v), v
    # the owner decides instead: the fix names that user, and with user: root nothing is checked
    os.chown(app, NOBODY.pw_uid, -1)
    os.chown(app / "db.sqlite3", NOBODY.pw_uid, -1)
    assert [m for i, m, _ in _problems(site) if i == 0] == []
    site = _registry_site(open_dir, f"  - {{name: v, root: {app}, python: {venv}/bin/python, user: root}}\n")
    assert _problems(site) == []
