"""Issue 6 item 7: `passenger-lite smoke` for CI."""
import os
import re
import signal
import subprocess
import xml.etree.ElementTree as ET

import psutil
import yaml

from harness import app_config, cli_command, copy_app, run_cli
from rawhttp import poll_until


def write_config(tmp_path, apps: list[dict], **site) -> str:
    cfg = tmp_path / "sites.yaml"
    cfg.write_text(yaml.safe_dump({"listen": ["127.0.0.1:1"], **site, "apps": apps}, sort_keys=False))
    return str(cfg)


def leftovers(tmp_path) -> list[str]:
    """Processes still running in (or started from) the test's folder: workers run in their
    app's root, the manager and its watchdog in tmp_path."""
    out = []
    for p in psutil.process_iter(["pid", "cwd", "cmdline"]):
        try:
            if p.info["cwd"] and p.info["cwd"].startswith(str(tmp_path)) and p.pid != os.getpid():
                out.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
        except psutil.Error:
            pass
    return out


def assert_no_leftovers(tmp_path) -> None:
    try:
        poll_until(lambda: not leftovers(tmp_path), 10, what="no process left behind")
    except AssertionError:
        raise AssertionError(f"processes left behind: {leftovers(tmp_path)}") from None


def cwd_in(tmp_path):
    """Not the config's folder (the harness's rule), but under tmp_path, where leftovers() looks."""
    d = tmp_path / "cwd"
    d.mkdir(exist_ok=True)
    return d


def smoke(tmp_path, cfg: str, *args: str) -> subprocess.CompletedProcess:
    r = run_cli("smoke", "--config", cfg, *args, cwd=cwd_in(tmp_path), timeout=120)
    assert_no_leftovers(tmp_path)
    return r


def cwds_of_children(pid: int) -> set[str]:
    out = set()
    for c in psutil.Process(pid).children(recursive=True):
        try:
            out.add(c.cwd())
        except psutil.Error:
            pass
    return out


def rows(stdout: str) -> dict:
    """{(app, request): (status, result)} from the table."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"(\S+)\s+(boot|[A-Z]+ \S+)\s+(\d+|-)\s+(?:\d+ ms|[\d.]+ s|-)\s+(PASS|FAIL|SKIP)(.*)", line)
        if m:
            out[(m.group(1), m.group(2))] = (m.group(3), m.group(4) + m.group(5))
    return out


def test_smoke_passes_on_a_good_config_and_writes_junit(tmp_path, apps_dir):
    ops = copy_app("ops_app", apps_dir)
    flask = copy_app("flask_app", apps_dir)
    cfg = write_config(tmp_path, [
        app_config("ops", ops, hosts=["ops.test"], smoke=[{"path": "/pid"},
                                                         {"path": "/status?code=404", "status": 404},
                                                         {"path": "/", "contains": "hello from ops_app"}]),
        app_config("flask", flask, type="python-wsgi", entry="app:app", path="/f"),
        app_config("lazy", ops, path="/lazy", min_processes=0, smoke=[{"path": "/lazy/pid", "method": "get"}]),
    ])
    junit = tmp_path / "out" / "smoke.xml"
    junit.parent.mkdir()
    r = smoke(tmp_path, cfg, "--junit", str(junit), "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    table = rows(r.stdout)
    assert table == {
        ("ops", "boot"): ("-", "PASS"),
        ("ops", "GET ops.test/pid"): ("200", "PASS"),
        ("ops", "GET ops.test/status?code=404"): ("404", "PASS"),
        ("ops", "GET ops.test/"): ("200", "PASS"),
        ("flask", "boot"): ("-", "PASS"),
        ("flask", "GET /f"): ("308", "PASS"),  # the default request: the mount path, any status below 500
        ("lazy", "boot"): ("-", "PASS  ok (min_processes 0: boots on the first request)"),
        ("lazy", "GET /lazy/pid"): ("200", "PASS"),
    }, r.stdout
    assert re.search(r"^8 passed, 0 failed in [\d.]+ s$", r.stdout, re.M)
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "8" and root.get("failures") == "0"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"ops", "flask", "lazy"}
    names = [c.get("name") for c in suites["ops"].findall("testcase")]
    assert names == ["boot", "GET ops.test/pid", "GET ops.test/status?code=404", "GET ops.test/"]
    assert all(c.find("failure") is None for s in suites.values() for c in s.findall("testcase"))
    assert all(float(c.get("time")) >= 0 for s in suites.values() for c in s.findall("testcase"))


def test_smoke_fails_and_names_the_app_that_crashes_at_boot(tmp_path, apps_dir):
    cfg = write_config(tmp_path, [
        app_config("good", copy_app("ops_app", apps_dir)),
        app_config("crashy", copy_app("boot_crash", apps_dir), path="/crashy"),
    ])
    junit = tmp_path / "smoke.xml"
    r = smoke(tmp_path, cfg, "--junit", str(junit))
    assert r.returncode == 1, r.stdout + r.stderr
    table = rows(r.stdout)
    assert table[("good", "boot")] == ("-", "PASS") and table[("good", "GET /")] == ("200", "PASS")
    assert table[("crashy", "boot")][1].startswith("FAIL  failed: the worker exited during start")
    assert table[("crashy", "GET /crashy")] == ("-", "SKIP  skipped: the app did not boot")
    # the last lines of the failing worker's stderr, under its row
    after = r.stdout[r.stdout.index("crashy  boot"):]
    assert "last lines of crashy's stderr:" in after
    assert "| RuntimeError: boom at boot: DATABASE_URL is not set" in after
    assert re.search(r"^2 passed, 1 failed, 1 skipped in", r.stdout, re.M)
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "1" and root.get("skipped") == "1"
    crashy = next(s for s in root.findall("testsuite") if s.get("name") == "crashy")
    boot = crashy.find("testcase[@name='boot']")
    failure = boot.find("failure")
    assert "exited during start" in failure.get("message") and "boom at boot" in failure.text
    assert crashy.find("testcase[@name='GET /crashy']/skipped") is not None
    good = next(s for s in root.findall("testsuite") if s.get("name") == "good")
    assert good.get("failures") == "0"


def test_smoke_fails_on_a_wrong_status_or_body_and_shows_the_worker_stderr(tmp_path, apps_dir):
    ops = copy_app("ops_app", apps_dir)
    cfg = write_config(tmp_path, [app_config("ops", ops, smoke=[
        {"path": "/status?code=500"},
        {"path": "/pid", "status": 201},
        {"path": "/", "contains": "goodbye"},
        {"path": "/halflines?tag=E&n=1", "host": "other.test"},
    ])])
    r = smoke(tmp_path, cfg)
    assert r.returncode == 1
    table = rows(r.stdout)
    assert table[("ops", "GET /status?code=500")] == ("500", "FAIL  status 500 (expected below 500)")
    assert table[("ops", "GET /pid")] == ("200", "FAIL  expected status 201, got 200")
    assert table[("ops", "GET /")] == ("200", "FAIL  the body does not contain 'goodbye'")
    assert table[("ops", "GET other.test/halflines?tag=E&n=1")] == ("200", "PASS")


def test_smoke_exits_2_on_a_config_error_and_1_when_interrupted(tmp_path, apps_dir):
    cfg = write_config(tmp_path, [{"name": "x", "root": str(tmp_path / "missing")}])
    r = run_cli("smoke", "--config", cfg)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    # Ctrl-C while an app boots: everything stops, no table of passes
    slow = apps_dir / "slow"
    slow.mkdir()
    (slow / "passenger_wsgi.py").write_text("import time\nprint('booting', flush=True)\ntime.sleep(60)\n"
                                            "def application(e, s):\n    pass\n")
    cfg = write_config(tmp_path, [app_config("slow", slow)])
    p = subprocess.Popen(cli_command() + ["smoke", "--config", cfg, "--verbose"], cwd=cwd_in(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    poll_until(lambda: str(slow) in cwds_of_children(p.pid), what="the worker booting")
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert "interrupted" in out
    assert_no_leftovers(tmp_path)


def test_smoke_without_verbose_shows_a_boot_traceback_once_whole(tmp_path, apps_dir):
    """Issue 12 item 5: the table shows the failing worker's traceback from its first line, and
    nothing repeats it (the manager's error line is one line)."""
    crash = copy_app("boot_crash", apps_dir)
    cfg = write_config(tmp_path, [app_config("crashy", crash, min_processes=2),
                                  app_config("again", crash, path="/again")])
    r = smoke(tmp_path, cfg)
    assert r.returncode == 1
    both = r.stdout + r.stderr
    assert both.count("RuntimeError: boom at boot") == 2, both  # once per app, in its table row
    assert both.count("Traceback (most recent call last)") == 2
    after = r.stdout[r.stdout.index("crashy  boot"):r.stdout.index("again")]
    assert "| Traceback (most recent call last):" in after and "passenger_wsgi.py\", line 5" in after
    assert "wsgi_loader.py" not in both and "importlib" not in both  # our frames are not the app's
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert errors and all("worker failed to start" in line for line in errors), r.stderr
    assert_no_leftovers(tmp_path)
