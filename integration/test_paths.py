"""Issue 12 item 1: every path in a config means the same file whatever the current directory, and
`check` and `start` agree (README, "Paths"). The harness always runs the CLI from an empty folder
that is not the config's; these tests use relative paths of every kind on top of that."""
import http.client
import os
import shutil
import socket
import ssl
import sys

import psutil
import trustme

from harness import copy_app, elsewhere, free_port, run_cli
from passenger_lite.manager.unixhttp import UnixHTTPConnection
from rawhttp import poll_until


class _HTTPS(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 with the host name in SNI and the certificate check."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def unix_get(path: str, url: str) -> tuple[int, bytes]:
    c = UnixHTTPConnection(path, 10)
    try:
        c.request("GET", url, headers={"Host": "x.test"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_interpreters_and_command_programs_resolve_from_elsewhere(make_server, tmp_path):
    d = tmp_path / "s0"  # the folder make_server writes sites.yaml to
    d.mkdir()
    blog = copy_app("wsgi_echo", d)
    (blog / ".venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, blog / ".venv" / "bin" / "python")  # the README's own example
    copy_app("rack_echo", d)
    copy_app("node_echo", d)
    (d / "bin").mkdir()
    os.symlink(shutil.which("ruby"), d / "bin" / "ruby")
    os.symlink(shutil.which("node") or shutil.which("nodejs"), d / "bin" / "node")
    cmd = copy_app("command_app", d)
    (cmd / "bin").mkdir()
    (cmd / "bin" / "serve").write_text(f'#!/bin/sh\nexec "{sys.executable}" server.py --port "$1"\n')
    (cmd / "bin" / "serve").chmod(0o755)
    config = """listen: ["127.0.0.1:@PORT@"]
apps:
  - {name: blog, root: ./wsgi_echo, python: ./wsgi_echo/.venv/bin/python, path: /blog, user: root}
  - {name: shop, root: rack_echo, ruby: bin/ruby, path: /shop, user: root}
  - {name: api, root: node_echo, node: ./bin/node, path: /api, user: root}
  - {name: cmd, root: command_app, type: command, command: [bin/serve, $PORT], path: /cmd, user: root}
"""
    s = make_server(config)
    assert psutil.Process(s.proc.pid).cwd() == str(elsewhere())
    r = s.cli("check")
    assert r.returncode == 0, r.stderr
    for name in ("blog", "shop", "api", "cmd"):
        status, _, body = s.get(f"/{name}/env")
        assert status == 200, (name, status, body[:300], s.logs()[-2000:])
    logs = s.logs()  # the spawn lines give each worker's command line
    assert f"blog: spawning worker #1: {blog}/.venv/bin/python " in logs
    assert f"shop: spawning worker #1: {d}/bin/ruby " in logs
    assert f"api: spawning worker #1: {d}/bin/node " in logs
    assert f"cmd: spawning worker #1: {cmd}/bin/serve " in logs
    assert psutil.Process(s.app_status("blog")["workers"][0]["pid"]).cmdline()[0] == f"{blog}/.venv/bin/python"
    # nothing is restarting in a loop, and the next request is served at once
    assert s.get("/blog/env")[0] == 200
    st = s.status()
    assert all(a["failed_starts"] == 0 and a["queue"] == 0 for a in st["apps"])


def test_check_resolves_from_the_config_not_from_the_cwd(tmp_path):
    """Before: `check` looked for ./blog/.venv/bin/python in the cwd, the worker in its root."""
    conf = tmp_path / "conf"
    copy_app("wsgi_echo", conf)
    cfg = conf / "sites.yaml"
    cfg.write_text("apps:\n  - {name: blog, root: ./wsgi_echo, python: ./venv/bin/python, user: root}\n")
    cwd = tmp_path / "cwd"
    (cwd / "venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, cwd / "venv" / "bin" / "python")  # only here, where the config is not
    r = run_cli("check", "--config", str(cfg), cwd=cwd)
    assert r.returncode == 2 and f"{conf}/venv/bin/python" in r.stderr, r.stderr
    (conf / "venv").symlink_to(cwd / "venv")
    r = run_cli("check", "--config", str(cfg), cwd=cwd)
    assert r.returncode == 0, r.stderr
    r = run_cli("check", "--config", os.path.relpath(cfg, cwd), cwd=cwd)  # a relative --config too
    assert r.returncode == 0, r.stderr


def test_site_files_and_sockets_resolve_from_elsewhere(make_server, tmp_path):
    d = tmp_path / "s0"
    d.mkdir()
    app = copy_app("wsgi_echo", d)
    (app / "assets").mkdir()
    (app / "assets" / "hello.txt").write_text("static hello")
    bad = copy_app("boot_crash", d)
    (bad / "oops.html").write_text("<h1>We are down</h1>")
    for sub in ("run", "logs", "tls"):
        (d / sub).mkdir()
    ca = trustme.CA()
    ca.issue_cert("x.test").private_key_and_cert_chain_pem.write_to_path(str(d / "tls" / "both.pem"))
    tls_port = free_port()
    config = f"""listen: ["127.0.0.1:@PORT@", "unix:run/front.sock",
         {{address: "127.0.0.1:{tls_port}", tls: {{cert: tls/both.pem, key: ./tls/both.pem}}}}]
metrics_listen: unix:run/metrics.sock
log_file: logs/pl.log
access_log: ./logs/access.log
apps:
  - {{name: a, root: wsgi_echo, static: {{/s: assets}}, user: root}}
  - {{name: bad, root: boot_crash, path: /bad, error_page: oops.html, user: root, max_processes: 1}}
"""
    s = make_server(config)
    # unix: listener, static folder and the app behind it
    assert unix_get(str(d / "run" / "front.sock"), "/s/hello.txt") == (200, b"static hello")
    assert unix_get(str(d / "run" / "front.sock"), "/env")[0] == 200
    # TLS files
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    c = _HTTPS("x.test", tls_port, context=ctx, timeout=10)
    c.request("GET", "/s/hello.txt")
    assert c.getresponse().read() == b"static hello"
    c.close()
    # metrics socket
    status, body = unix_get(str(d / "run" / "metrics.sock"), "/metrics")
    assert status == 200 and b"passenger_lite_requests_total" in body
    # error page of the app's root
    status, _, body = s.get("/bad")
    assert status == 503 and b"We are down" in body
    # log_file and access_log in the config's folder, not in the cwd
    poll_until(lambda: "/s/hello.txt" in (d / "logs" / "access.log").read_text(), 10, what="the access log")
    assert "ready in" in (d / "logs" / "pl.log").read_text()
    assert not any(elsewhere().iterdir())
    # the next request is served at once; nothing queued
    assert s.get("/env")[0] == 200
    a = s.app_status("a")
    assert a["queue"] == 0 and sum(w["in_flight"] for w in a["workers"]) == 0
