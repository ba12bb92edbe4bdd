"""Issue 12 item 9 (and --version, item 2): the CLI's edges a newcomer meets, through the real CLI."""
import os
import pwd
import shutil
import subprocess
import threading
from importlib.metadata import version
from pathlib import Path

import pytest

from harness import Server, app_config, cli_command, copy_app, elsewhere, run_cli


def test_version_comes_from_the_package_metadata():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"passenger-lite {version('passenger-lite')}", r


def test_check_into_a_pipe_closed_early_ends_quietly(tmp_path):
    """`check | head -1` with a routing table far larger than a pipe holds."""
    app = copy_app("wsgi_echo", tmp_path)
    apps = "".join(f"  - {{name: a{i}, root: {app}, path: /a{i}, min_processes: 0, user: root}}\n" for i in range(1500))
    cfg = tmp_path / "sites.yaml"
    cfg.write_text("apps:\n" + apps)
    cmd = " ".join(cli_command()) + f" check --config {cfg} | head -1"
    r = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True, timeout=120,
                       cwd=elsewhere())
    assert r.stdout.startswith(f"{cfg}: OK, 1500 apps") and len(r.stdout.splitlines()) == 1
    assert r.stderr == "", r.stderr  # no BrokenPipeError traceback, no "Exception ignored"
    assert r.returncode == 141  # as a shell reports any program that SIGPIPE ended (yes | head -1)


def test_200_simultaneous_first_requests_to_a_scale_to_zero_app_are_all_served(make_server, apps_dir):
    """The default max_queue (100) turned half of a cold start's burst away with 503 in 60 ms;
    while the first worker starts, the queue now holds them all."""
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir), min_processes=0,
                                         max_processes=2)]})
    assert s.app_status("a")["workers"] == []
    n = 200
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def one(i: int) -> None:
        c = s.connection(timeout=60)
        try:
            c.connect()
            barrier.wait(30)
            c.request("GET", f"/env?i={i}")
            r = c.getresponse()
            r.read()
            results[i] = r.status
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = repr(e)
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results == [200] * n, {str(r) for r in results}
    a = s.app_status("a")
    assert a["queue"] == 0 and sum(w["in_flight"] for w in a["workers"]) == 0
    assert 1 <= len([w for w in a["workers"] if w["state"] == "ready"]) <= 2
    assert s.get("/env")[0] == 200  # and the next one is served at once


# ---------------------------------------------------------------------------- another user's manager


def _as_pltest(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI as user pltest, with Debian's Python (pyenv's under /root is out of its reach) and
    this checkout's packages, whose compiled parts are for the same CPython 3.11 ABI."""
    import sys
    import sysconfig

    py = "/usr/bin/python3"
    if not (shutil.which("setpriv") and os.path.exists(py)):
        pytest.skip("setpriv and /usr/bin/python3 are needed to act as another user")
    probe = subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    if probe.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip(f"{py} is not Python {sys.version_info[:2]}")
    site = sysconfig.get_paths()["purelib"]
    code = ("import site, sys; site.addsitedir(sys.argv[1]); from passenger_lite.manager.cli import main; "
            "main(sys.argv[2:])")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}  # no XDG_RUNTIME_DIR
    return subprocess.run(["setpriv", "--reuid=pltest", "--regid=pltest", "--init-groups", py, "-c", code,
                           site, *args], capture_output=True, text=True, timeout=60, env=env, cwd="/")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to act as user pltest")
def test_a_query_for_another_users_manager_says_whose_it_is_and_creates_nothing(open_dir):
    try:
        uid = pwd.getpwnam("pltest").pw_uid
    except KeyError:
        pytest.skip("no user pltest (bash .ci/setup-tests makes it)")
    root = copy_app("wsgi_echo", open_dir)
    with Server(open_dir / "srv", {"apps": [app_config("a", root)]}) as s:  # where pltest can read it
        mine = Path(f"/tmp/passenger-lite-{uid}")
        existed = mine.exists()
        for cmd in (["status"], ["status", "--json"], ["reload"], ["stop"], ["restart", "a"]):
            r = _as_pltest([*cmd, "--config", str(s.config)])
            assert r.returncode == 1, (cmd, r)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
            assert f"(pid {s.proc.pid}) belongs to user root, not to you" in lines[0], lines[0]
            assert "run this command as root" in lines[0]
        if not existed:
            assert not mine.exists(), "a query created pltest's runtime folder"
        # and for a config nobody serves, the plain answer
        other = open_dir / "other.yaml"
        other.write_text(s.config.read_text())
        r = _as_pltest(["status", "--config", str(other)])
        assert r.returncode == 1 and r.stderr.strip() == f"passenger-lite: no passenger-lite is running for {other}"
        assert s.get("/env")[0] == 200  # the manager asked about is untouched
