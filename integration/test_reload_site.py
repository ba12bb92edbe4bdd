"""Issue 12 item 7: `reload` applies the site keys it can (logs, access log, metrics listener,
limits) and names, as a warning, each one that takes a restart; before, it said "reloaded" and
changed nothing."""
import http.client
import socket

import yaml

from harness import app_config, copy_app, free_port
from rawhttp import poll_until


def rewrite(s, **site) -> None:
    config = yaml.safe_load(s.config.read_text())
    for k, v in site.items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    s.config.write_text(yaml.safe_dump(config, sort_keys=False))


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


def metrics_up(port: int) -> bool:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/metrics")
        return c.getresponse().status == 200
    except OSError:
        return False
    finally:
        c.close()


def settled(s, name: str, workers: int) -> None:
    a = s.app_status(name)
    assert a["queue"] == 0 and sum(w["in_flight"] for w in a["workers"]) == 0, a
    assert len([w for w in a["workers"] if w["state"] == "ready"]) == workers, a


def test_reload_turns_on_and_off_the_access_log_metrics_and_log_file(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir))]})
    (s.dir / "logs").mkdir()
    mport = free_port()
    rewrite(s, access_log="logs/access.log", metrics_listen=f"127.0.0.1:{mport}", log_file="logs/pl.log",
            client_max_body_size="10")
    r = s.cli("reload")
    assert r.returncode == 0, r.stderr
    assert "site keys applied: client_max_body_size, log_file, access_log, metrics_listen" in r.stdout, r.stdout
    assert r.stderr == ""
    assert metrics_up(mport)
    assert s.get("/env?after-reload")[0] == 200
    poll_until(lambda: "/env?after-reload" in (s.dir / "logs" / "access.log").read_text(), 10, what="access log")
    assert s.request("POST", "/echo", body=b"x" * 11)[0] == 413  # a limit applies at once
    s.cli("restart", "a")
    poll_until(lambda: "restart command" in (s.dir / "logs" / "pl.log").read_text(), 10, what="log_file")
    settled(s, "a", 1)
    # and off again: the port closes, the log file gets no more lines
    rewrite(s, access_log=None, metrics_listen=None)
    r = s.cli("reload")
    assert r.returncode == 0 and "site keys applied: access_log, metrics_listen" in r.stdout, (r.stdout, r.stderr)
    assert refused(mport)
    size = (s.dir / "logs" / "access.log").stat().st_size
    assert s.get("/env?after-off")[0] == 200
    assert (s.dir / "logs" / "access.log").stat().st_size == size
    settled(s, "a", 1)


def test_reload_names_each_key_that_needs_a_restart_and_keeps_serving(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir))]})
    new_port = free_port()
    rewrite(s, listen=[f"127.0.0.1:{new_port}"], max_pool_size=5)
    r = s.cli("reload")
    assert r.returncode == 0, r.stderr
    assert "site keys applied: max_pool_size" in r.stdout
    assert "warning: listen changed, which takes a restart (stop, then start) to apply" in r.stderr
    assert s.get("/env")[0] == 200 and refused(new_port)  # the old listener stays, until a restart
    settled(s, "a", 1)


def test_reload_of_environment_restarts_the_apps_so_their_workers_see_it(make_server, apps_dir):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir))]})
    assert s.get_json("/env")["env"]["WSGI_ENV"] == "production"
    rewrite(s, environment="development")
    r = s.cli("reload")
    assert r.returncode == 0 and "changed a; site keys applied: environment" in r.stdout, (r.stdout, r.stderr)
    assert s.get_json("/env")["env"]["WSGI_ENV"] == "development"
    assert s.app_status("a")["restarts"] == 1
    settled(s, "a", 1)


def test_a_log_file_that_cannot_be_opened_rejects_the_reload(make_server, apps_dir, tmp_path):
    s = make_server({"apps": [app_config("a", copy_app("wsgi_echo", apps_dir))]})
    rewrite(s, log_file=str(tmp_path / "no" / "such" / "folder" / "pl.log"))
    r = s.cli("reload")
    assert r.returncode == 2 and "reload rejected; the running config stays" in r.stderr
    assert "cannot open log_file" in r.stderr and "Traceback" not in r.stderr
    assert s.get("/env")[0] == 200
    assert "reload rejected" in s.logs()  # still logging where it did
    settled(s, "a", 1)
