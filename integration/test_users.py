"""Issue 7 item 4: per-app users when started as root, oneself otherwise, and runtime sockets that
no other user can reach or replace. Through the real CLI, with real users:

- `pltest` (group `pltest`, supplementary group `pltest-extra`), created here if missing (and
  by .ci/setup-tests), owns the apps of the "regular user" cases;
- `nobody` is the default_user and the outsider that tries the sockets.

The apps that run as those users live in a world-traversable temp folder (pytest's own are 0700
root) and use an interpreter those users can run; commands "as another user" go through setpriv.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import Server, app_config, cli_command, copy_app, run_cli

from passenger_lite.manager import runtimedir
from passenger_lite.manager.users import unreachable, worker_user
from passenger_lite.spawners.base import loader_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="user switching needs the tests to run as root")

USER, EXTRA = "pltest", "pltest-extra"


def ensure_test_user() -> None:
    """Idempotent: group pltest-extra, user pltest (no home, no login) in that group."""
    try:
        grp.getgrnam(EXTRA)
    except KeyError:
        subprocess.run(["groupadd", "--system", EXTRA], check=True)
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--groups", EXTRA, USER], check=True)
    if USER not in grp.getgrnam(EXTRA).gr_mem:
        subprocess.run(["usermod", "--append", "--groups", EXTRA, USER], check=True)


@pytest.fixture(scope="module")
def users():
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to act as another user")
    ensure_test_user()
    nobody = worker_user(pwd.getpwnam("nobody"))
    blocked = unreachable(nobody, loader_path("wsgi_loader.py"), 4)
    if blocked:
        pytest.skip(f"workers running as nobody cannot read passenger-lite's loader: {blocked}")
    return {"pltest": worker_user(pwd.getpwnam(USER)), "nobody": nobody}


@pytest.fixture(scope="module")
def python(users) -> str:
    """A Python that pltest and nobody can run (pyenv's under /root is not one)."""
    for exe in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        if os.path.exists(exe) and not any(unreachable(u, exe, 5) for u in users.values()):
            return exe
    pytest.skip("no Python interpreter that nobody can run")


@pytest.fixture
def start(open_dir):
    servers = []

    def make(config, cls=Server, **kw) -> Server:
        s = cls(open_dir / f"s{len(servers)}", config, app_user=None, **kw)
        servers.append(s)
        s.start()
        return s

    yield make
    for s in servers:  # shown when the test failed (its folder is removed)
        print(f"---- {s.log_path}\n{s.logs()}")
        if s.proc is not None and s.proc.poll() is None:
            s.stop()
        else:
            s.assert_no_leftovers()


def whoami_app(dest: Path, owner: str | None = None) -> Path:
    root = copy_app("whoami", dest)
    if owner:
        pw = pwd.getpwnam(owner)
        for f in [root, *root.iterdir()]:
            os.chown(f, pw.pw_uid, pw.pw_gid)
    return root


def as_user(user: str, group: str, code: str, python: str) -> str:
    """Run Python `code` as user:group (with the user's groups); its stdout."""
    r = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", python, "-c", code],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r
    return r.stdout.strip()


CONNECT = """
import errno, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1] if len(sys.argv) > 1 else {path!r})
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"""


def connect_as(user: str, group: str, path: str | Path, python: str) -> str:
    return as_user(user, group, CONNECT.format(path=str(path)), python)


# ---------------------------------------------------------------------------- who the workers run as


def test_app_owned_by_a_regular_user_runs_as_that_user_with_its_groups(start, open_dir, users, python):
    root = whoami_app(open_dir, owner=USER)
    s = start({"apps": [app_config("a", root, python=python, user=None)]})
    me = s.get_json("/")
    pl = pwd.getpwnam(USER)
    assert (me["uid"], me["euid"]) == (pl.pw_uid, pl.pw_uid)
    assert (me["gid"], me["egid"]) == (pl.pw_gid, pl.pw_gid)
    assert grp.getgrnam(EXTRA).gr_gid in me["groups"]
    assert sorted(me["groups"]) == sorted(set(os.getgrouplist(USER, pl.pw_gid)))
    assert me["env"]["USER"] == me["env"]["LOGNAME"] == USER and me["env"]["HOME"] == pl.pw_dir
    assert me["cwd"] == str(root)


def test_root_owned_app_runs_as_the_default_user_nobody(start, open_dir, users, python):
    root = whoami_app(open_dir)
    assert os.stat(root).st_uid == 0
    s = start({"apps": [app_config("a", root, python=python, user=None)]})
    me = s.get_json("/")
    nobody = pwd.getpwnam("nobody")
    assert (me["uid"], me["gid"]) == (nobody.pw_uid, nobody.pw_gid)
    assert 0 not in me["groups"], "no group of root's is kept"
    assert me["env"]["USER"] == "nobody" and me["env"]["HOME"] == nobody.pw_dir


def test_user_root_is_the_only_way_to_run_as_root(start, open_dir, users, python):
    root = whoami_app(open_dir, owner=USER)
    s = start({"apps": [app_config("r", root, python=python, path="/r", user="root"),
                        app_config("d", whoami_app(open_dir / "d"), python=python, path="/d", user=None)]})
    assert s.get_json("/r/")["uid"] == 0
    assert s.get_json("/d/")["uid"] == pwd.getpwnam("nobody").pw_uid


def test_user_and_group_keys_choose_the_ids_and_groups(start, open_dir, users, python):
    root = whoami_app(open_dir)  # root-owned: the keys, not the owner, decide
    s = start({"apps": [app_config("a", root, python=python, user=USER, group=EXTRA)]})
    me = s.get_json("/")
    extra = grp.getgrnam(EXTRA).gr_gid
    assert me["uid"] == pwd.getpwnam(USER).pw_uid and me["gid"] == extra
    assert sorted(me["groups"]) == sorted(set(os.getgrouplist(USER, extra)))


def test_unknown_users_and_groups_are_config_errors_naming_the_key(open_dir, users):
    root = whoami_app(open_dir)
    cfg = open_dir / "sites.yaml"
    cfg.write_text(f"default_user: nobody\napps:\n  - name: a\n    root: {root}\n    user: no-such-user-x\n"
                   f"  - name: b\n    root: {root}\n    path: /b\n    group: no-such-group-x\n")
    for cmd in ("check", "start"):
        r = run_cli(cmd, "--config", str(cfg))
        assert r.returncode == 2, r
        assert f"{cfg}:5: apps[0] (a).user: unknown user 'no-such-user-x'" in r.stderr
        assert f"{cfg}:9: apps[1] (b).group: unknown group 'no-such-group-x'" in r.stderr
        assert "Traceback" not in r.stderr
    cfg.write_text(f"default_user: root\napps:\n  - name: a\n    root: {root}\n")
    r = run_cli("check", "--config", str(cfg))
    assert r.returncode == 2 and f"{cfg}:1: default_user: 'root' is root" in r.stderr, r


def test_a_reload_naming_an_unknown_user_is_rejected_and_the_old_config_stays(start, open_dir, users, python):
    root = whoami_app(open_dir, owner=USER)
    s = start({"apps": [app_config("a", root, python=python, user=None)]})
    pid = s.get_json("/")["pid"]
    s.config.write_text(s.config.read_text().replace("user: null", "user: no-such-user-r"))
    r = s.cli("reload")
    assert r.returncode == 2 and "apps[0] (a).user: unknown user 'no-such-user-r'" in r.stderr, r
    me = s.get_json("/")
    assert (me["pid"], me["uid"]) == (pid, pwd.getpwnam(USER).pw_uid)


def test_an_app_its_user_cannot_read_fails_with_a_clear_error_page(start, open_dir, users, python):
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    root = whoami_app(private)  # root-owned, so nobody; and nobody cannot enter `private`
    s = start({"environment": "development", "apps": [app_config("a", root, python=python, user=None)]})
    status, _, body = s.get("/")
    assert status == 503
    page = body.decode()
    assert f"user nobody cannot enter folder {private}" in page and "drwx------ root:root" in page
    assert "chmod o+x" in page and "user: root" in page
    assert "cannot enter folder" in s.app_status("a")["last_error"]


# ---------------------------------------------------------------------------- sockets


def test_other_users_cannot_reach_or_replace_the_control_and_worker_sockets(start, open_dir, users, python):
    root = whoami_app(open_dir, owner=USER)
    s = start({"apps": [app_config("a", root, python=python, user=None)]})
    sock = Path(s.get_json("/")["env"]["PASSENGER_LITE_SOCKET"])
    control = s.control_path()
    # root (the manager) gets through; the app's own user and an outsider get through to neither
    assert connect_as("root", "root", sock, python) == "connected"
    for user, group in (("nobody", "nogroup"), (USER, USER)):
        assert connect_as(user, group, control, python) == "EACCES", user
        assert connect_as(user, group, sock, python) == "EACCES", user
    # the layout: run folder root 0711, the worker's folder handed back to root (0700) once it
    # answered, the socket itself the worker's
    st_run, st_dir, st_sock = os.stat(sock.parent.parent), os.stat(sock.parent), os.lstat(sock)
    assert (st_run.st_uid, stat.S_IMODE(st_run.st_mode)) == (0, 0o711)
    assert (st_dir.st_uid, stat.S_IMODE(st_dir.st_mode)) == (0, 0o700)
    assert stat.S_ISSOCK(st_sock.st_mode) and st_sock.st_uid == pwd.getpwnam(USER).pw_uid
    # the control socket's folders are root's alone; the workers' tree can only be passed through
    assert [stat.S_IMODE(os.stat(d).st_mode) for d in (control.parent, control.parent.parent)] == [0o700, 0o700]
    assert stat.S_IMODE(os.stat(sock.parent.parent.parent).st_mode) == 0o711
    for folder in (control.parent.parent, sock.parent.parent.parent, sock.parent.parent, sock.parent):
        assert os.stat(folder).st_uid == 0 and not os.stat(folder).st_mode & 0o022, folder


FAKE_WORKER = """#!{python}
# Pretends to be the interpreter: binds a socket under another name and puts a symlink to it
# where its socket should be (what a hijacked app would do to aim root at some other socket).
import os, socket
path = os.environ["PASSENGER_LITE_SOCKET"]
s = socket.socket(socket.AF_UNIX)
s.bind(path + ".real")
s.listen(8)
os.symlink(path + ".real", path)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
    c.close()
"""


def test_a_worker_that_swaps_its_socket_for_a_symlink_is_refused(start, open_dir, users, python):
    root = whoami_app(open_dir, owner=USER)
    fake = root / "fakepy"
    fake.write_text(FAKE_WORKER.format(python=python))
    fake.chmod(0o755)
    s = start({"apps": [app_config("a", root, python=str(fake), user=None, max_processes=1)]}, wait=False)
    st = s.wait_ready()
    assert st["apps"][0]["state"] in ("backoff", "failed"), st
    err = s.app_status("a")["last_error"]
    assert f"is not a socket of user {USER}" in err and "refusing to connect" in err
    assert s.get("/")[0] == 503


# ---------------------------------------------------------------------------- not root


class NonRootServer(Server):
    """The CLI run by an unprivileged user, with its runtime folder in $XDG_RUNTIME_DIR."""

    user = USER

    def command(self) -> list[str]:
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *super().command()]

    def control_path(self) -> Path:
        return Path(self.env["XDG_RUNTIME_DIR"]) / "passenger-lite" / runtimedir._digest(self.config) / "control.sock"


def test_a_manager_started_by_a_regular_user_runs_everything_as_itself(start, open_dir, users, python):
    cli = shutil.which(cli_command()[0]) or cli_command()[0]
    with open(cli, "rb") as f:
        first = f.readline()
    interp = first[2:].decode().strip().split()[0] if first.startswith(b"#!") else cli
    for path in (cli, interp):
        why = unreachable(users["pltest"], path, 5)
        if why:
            pytest.skip(f"the CLI cannot be run by {USER}: {why} (run the tests from .venv, see .ci/setup)")
    xdg = open_dir / "xdg"
    xdg.mkdir(mode=0o700)
    shutil.chown(xdg, USER, USER)
    a = whoami_app(open_dir / "a")
    b = whoami_app(open_dir / "b", owner="nobody")
    s = start({"apps": [app_config("a", a, python=python, user="root"),
                        app_config("b", b, python=python, path="/b", user=None)]},
              cls=NonRootServer, env={"XDG_RUNTIME_DIR": str(xdg), "HOME": "/nonexistent"})
    me = pwd.getpwnam(USER)
    for path in ("/", "/b/"):
        got = s.get_json(path)
        assert (got["uid"], got["gid"]) == (me.pw_uid, me.pw_gid), path
    said = [line for line in s.logs().splitlines() if "not started as root" in line]
    assert len(said) == 1, s.logs()
    assert f"run as {USER} (uid {me.pw_uid})" in said[0] and "`user:`/`group:` of a ignored" in said[0]
    sock = Path(s.get_json("/")["env"]["PASSENGER_LITE_SOCKET"])
    assert sock.is_relative_to(xdg)
    assert connect_as("nobody", "nogroup", s.control_path(), python) == "EACCES"
    assert connect_as("nobody", "nogroup", sock, python) == "EACCES"
    assert stat.S_IMODE(os.stat(xdg / "passenger-lite").st_mode) == 0o700



# ---------------------------------------------------------------------------- check: issue 12 item 3


def check_as_root(cfg: Path) -> subprocess.CompletedProcess:
    return run_cli("check", "--config", str(cfg))


def test_check_names_what_a_rails_apps_user_cannot_read_or_write_and_the_fix(start, open_dir, users, python):
    root = open_dir / "rails"
    shutil.copytree(Path(__file__).resolve().parents[1] / "tests" / "apps" / "rails_app", root)
    (root / "config" / "master.key").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "config" / "master.key").chmod(0o600)
    (root / "log").mkdir()
    (root / "tmp").mkdir()
    app = app_config("blog", root, user=None, env={"SECRET_KEY_BASE": "test-only"}, start_timeout=120)
    cfg = open_dir / "sites.yaml"
    cfg.write_text(yaml.safe_dump({"environment": "development", "apps": [app]}))
    r = check_as_root(cfg)
    assert r.returncode == 2, r
    assert (f"apps[0] (blog): its workers run as nobody:{grp.getgrgid(pwd.getpwnam('nobody').pw_gid).gr_name} "
            f"(default_user, as {root} belongs to root), and user nobody cannot read {root}/config/master.key: "
            f"{root}/config/master.key is -rw------- root:root (Rails reads it to decrypt its credentials); "
            f"fix: give the app to the user that should run it (`chown -R USER {root}`") in r.stderr
    assert f"warning: {cfg}:" in r.stderr and f"user nobody cannot write/enter {root}/log" in r.stderr
    assert f"cannot write/enter {root}/tmp" in r.stderr and "Traceback" not in r.stderr
    # start says the same in its log, and the spawn refuses with that reason on the error page
    s = start({"environment": "development", "apps": [app]})
    assert f"user nobody cannot read {root}/config/master.key" in s.logs()
    status, _, body = s.get("/")
    assert status == 503 and f"cannot read {root}/config/master.key".encode() in body
    s.stop()
    # the fix it names: give the app to its user; then check is clean and Rails serves as that user
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(root)], check=True)
    r = check_as_root(cfg)
    assert r.returncode == 0 and "warning" not in r.stderr, r
    s = start({"apps": [app]}, ready_timeout=150)
    status, _, body = s.get("/")
    assert status == 200 and body.startswith(b"hello from rails 6."), body[:300]
    st = s.app_status("blog")
    assert len(st["workers"]) == 1 and st["queue"] == 0
    assert psutil_uid(st["workers"][0]["pid"]) == pwd.getpwnam(USER).pw_uid


def psutil_uid(pid: int) -> int:
    import psutil

    return psutil.Process(pid).uids().real


SQLITE_WRITE = """
import sqlite3, sys
try:
    c = sqlite3.connect(sys.argv[1] if len(sys.argv) > 1 else {path!r})
    c.execute("insert into t values (1)")
    c.commit()
    print("written")
except sqlite3.Error as e:
    print(e)
"""


def test_check_warns_when_a_django_projects_sqlite_is_read_only_for_its_user(open_dir, users, python):
    pytest.importorskip("django")
    root = open_dir / "dj"
    root.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)], check=True,
                   capture_output=True, timeout=60)
    db = root / "db.sqlite3"  # where startproject's settings put it (BASE_DIR / 'db.sqlite3')
    import sqlite3

    c = sqlite3.connect(db)
    c.execute("create table t (x)")
    c.commit()
    c.close()
    cfg = open_dir / "sites.yaml"
    cfg.write_text(yaml.safe_dump({"apps": [app_config("dj", root, python=python, user=None)]}))
    r = check_as_root(cfg)
    assert r.returncode == 0, r  # it starts; writes fail later: warnings
    assert f"user nobody cannot read/write {db}: {db} is -rw-r--r-- root:root (the app's SQLite database)" in r.stderr
    assert f"user nobody cannot write/enter {root}: " in r.stderr and "journal" in r.stderr
    assert "python-wsgi" in r.stdout and "mysite.wsgi:application" in r.stdout
    # what the warning says is what the real user meets
    assert "readonly database" in as_user("nobody", "nogroup", SQLITE_WRITE.format(path=str(db)), python)
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(root)], check=True)
    r = check_as_root(cfg)
    assert r.returncode == 0 and "warning" not in r.stderr, r
    assert as_user(USER, USER, SQLITE_WRITE.format(path=str(db)), python) == "written"


def test_check_refuses_a_venv_whose_python_lives_under_roots_home(start, open_dir, users, python):
    base = os.path.realpath(sys.executable)
    if not base.startswith("/root/"):
        pytest.skip("the test Python is not under /root")
    root = whoami_app(open_dir / "app")
    subprocess.run([base, "-m", "venv", "--without-pip", str(root / ".venv")], check=True, timeout=60)
    venv_python = root / ".venv" / "bin" / "python"
    app = app_config("a", root, python=str(venv_python), user=None)
    cfg = open_dir / "sites.yaml"
    cfg.write_text(yaml.safe_dump({"apps": [app]}))
    r = check_as_root(cfg)
    assert r.returncode == 2, r
    assert "user nobody cannot enter folder /root: /root is drwx------ root:root" in r.stderr
    assert f"`chown -R USER {root}`" in r.stderr or "`user:`" in r.stderr
    # what the real user meets: the interpreter's folder is out of its reach
    code = f"import os\ntry:\n    os.stat({os.path.dirname(base)!r})\n    print('reached')\nexcept OSError as e:\n    print(e.strerror)"
    assert as_user("nobody", "nogroup", code, python) == "Permission denied"
    # a venv made from a Python everyone can run passes
    subprocess.run([python, "-m", "venv", "--without-pip", "--clear", str(root / ".venv")], check=True, timeout=60)
    assert not os.path.realpath(venv_python).startswith("/root/")
    r = check_as_root(cfg)
    assert r.returncode == 0 and "warning" not in r.stderr, r
    s = start({"apps": [app]})
    assert s.get_json("/")["uid"] == pwd.getpwnam("nobody").pw_uid
