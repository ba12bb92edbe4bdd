"""Everything the bench measures, started once and side by side, with the same 2 workers behind
each setup. Ports 18100-18199 on 127.0.0.1 (the anchors use 18000-18099); sockets under the run folder.

  direct-uvicorn    uvicorn --workers 2 on TCP (the worker without a proxy, as in the anchors)
  aioproxy[2]       the anchors' straightforward aiohttp proxy, 1 process (2: SO_REUSEPORT) -> uvicorn --workers 2 (UDS)
  nginx-uvicorn     nginx (1 worker process, upstream keepalive) -> the same uvicorn --workers 2 (UDS)
  pl-<app>          passenger-lite, one app with min = max = 2 workers
  nginx-pl-<app>    nginx -> passenger-lite's own 2 worker sockets of that app (literally the same workers)
  passenger-<app>   Passenger 6.0.17 standalone, builtin engine, 2 processes
  *-direct          the latency probe straight onto one passenger-lite worker's Unix socket
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loadgen import http_get, wait_http
from plinstance import PLInstance
from procs import Procs, children_map, cmdline, descendants

HERE = Path(__file__).resolve().parent
H = "127.0.0.1"
P = {  # ports
    "direct-uvicorn": 18101, "aioproxy": 18102, "aioproxy2": 18103,
    "nginx-uvicorn": 18111, "nginx-pl-asgi": 18112, "nginx-pl-wsgi": 18113, "nginx-pl-rack": 18114,
    "nginx-pl-node": 18115, "nginx-static": 18116, "nginx-tls": 18117,
    "pl-asgi": 18121, "pl-tls": 18122, "pl-wsgi": 18123, "pl-rack": 18124, "pl-node": 18125,
    "pl-metrics": 18126, "pl-metrics-scrape": 18127,
    "passenger-wsgi": 18131, "passenger-rack": 18132, "passenger-node": 18133,
    "cold-pl": 18141, "cold-passenger": 18142, "mem-pl": 18151,
}
APP_TYPES = {"asgi": ("python-asgi", "asgi:app"), "wsgi": ("python-wsgi", "passenger_wsgi:application"),
             "rack": ("ruby-rack", "config.ru"), "node": ("node", "app.js")}
PASSENGER_APPS = {"wsgi": "wsgi", "rack": "rack", "node": "node"}


@dataclass
class Target:
    name: str
    desc: str
    address: str                # host:port, or unix:/path for the probe
    loads: list[str]
    front: Callable[[], list[int]] = lambda: []    # the proxy's own process(es), for CPU shares
    workers: Callable[[], list[int]] = lambda: []
    pids: dict = field(default_factory=dict)      # resolved once: {"front": [...], "workers": [...]}

    @property
    def url(self) -> str:
        scheme = "https" if "tls" in self.loads else "http"
        return f"{scheme}://{self.address}/"


@dataclass
class Env:
    run: Path
    py: str
    cli: list[str]
    node: str
    types: list[str]               # spawner types passenger-lite knows in this checkout
    procs: Procs
    notes: list[str] = field(default_factory=list)

    @property
    def apps(self) -> Path:
        return self.run / "apps"


def prepare(env: Env) -> None:
    """The run folder: a copy of the apps (Passenger writes into app folders), the 1 MiB static file,
    a throwaway certificate."""
    shutil.copytree(HERE / "apps", env.apps)
    pub = env.apps / "asgi" / "public"
    pub.mkdir()
    (pub / "1m.bin").write_bytes(os.urandom(1 << 20))
    for d in ("sock", "tmp", "tmp/cold", "instreg", "instreg-cold", "nginx", "tls"):
        (env.run / d).mkdir(parents=True, exist_ok=True)
    tls = env.run / "tls"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test",
                        "-keyout", str(tls / "key.pem"), "-out", str(tls / "cert.pem")], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl could not make a throwaway certificate:\n{r.stderr[-800:]}")


def pl_app(env: Env, kind: str, name: str | None = None, n: int = 2, **extra) -> dict:
    typ, entry = APP_TYPES[kind]
    app = {"name": name or kind, "root": str(env.apps / kind), "type": typ, "entry": entry,
           "min_processes": n, "max_processes": n}
    if os.geteuid() == 0:
        # started as root, passenger-lite runs workers as the app folder's owner or `nobody`; the bench's
        # interpreter may live where nobody cannot read (/root/.pyenv): run them as ourselves, as Passenger does here
        app["user"] = "root"
    if typ.startswith("python"):
        app["python"] = env.py
    if typ == "node":
        app["node"] = env.node
    app.update(extra)
    return app


def pl_site(listen: list, apps: list[dict], **extra) -> dict:
    site = {"listen": listen, "max_pool_size": max(6, sum(a["max_processes"] for a in apps)),
            "client_max_body_size": "2g", "apps": apps}
    site.update(extra)
    return site


def passenger_argv(env: Env, port: int, registry: Path, tag: str) -> list[str]:
    return ["passenger", "start", "-p", str(port), "--engine", "builtin", "-a", H, "-e", "production",
            "--min-instances", "2", "--max-pool-size", "2", "--python", env.py, "--nodejs", env.node,
            "--disable-security-update-check", "--disable-anonymous-telemetry",
            "--instance-registry-dir", str(registry), "--log-file", str(env.run / "logs" / f"passenger-{tag}.log"),
            "--pid-file", str(env.run / f"passenger-{tag}.pid")]


def passenger_env(env: Env, tmp: Path, registry: Path) -> dict:
    """Passenger writes temp folders to $TMPDIR; passenger-config finds instances in the registry."""
    e = dict(os.environ)
    e["TMPDIR"] = str(tmp)
    e["PASSENGER_INSTANCE_REGISTRY_DIR"] = str(registry)
    return e


def uvicorn_argv(env: Env, *bind: str) -> list[str]:
    return [env.py, "-m", "uvicorn", "--app-dir", str(env.apps / "asgi"), "asgi:app", "--workers", "2",
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning", *bind]


# ------------------------------------------------------------------------------------------ nginx


def nginx_conf(env: Env, upstreams: dict[str, list[str]]) -> str:
    d = env.run / "nginx"
    ups = "\n".join(
        f"    upstream {name} {{ {' '.join(f'server {a};' for a in addrs)} keepalive 64; }}"
        for name, addrs in upstreams.items())
    servers = [f"    server {{ listen {H}:{P['nginx-static']}; root {env.apps / 'asgi' / 'public'}; }}"]
    if "uvicorn" in upstreams:
        servers.append(f"    server {{ listen {H}:{P['nginx-uvicorn']}; location / {{ proxy_pass http://uvicorn; }} }}")
    for kind in ("asgi", "wsgi", "rack", "node"):
        if f"pl_{kind}" in upstreams:
            servers.append(f"    server {{ listen {H}:{P['nginx-pl-' + kind]}; location / {{ proxy_pass http://pl_{kind}; }} }}")
    if "pl_asgi" in upstreams:
        servers.append(f"    server {{ listen {H}:{P['nginx-tls']} ssl; ssl_certificate {env.run / 'tls/cert.pem'};"
                       f" ssl_certificate_key {env.run / 'tls/key.pem'}; location / {{ proxy_pass http://pl_asgi; }} }}")
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# generated by bench/setups.py: nginx defaults (proxy buffers too) except what is written here
{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;      # as in Debian's stock nginx.conf (the static file comparison)
    tcp_nopush on;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
{ups}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $remote_addr;
{chr(10).join(servers)}
}}
"""


# ------------------------------------------------------------------------------------------ start


def _kids(pid: int) -> Callable[[], list[int]]:
    return lambda: children_map().get(pid, [])


def _tree(pid: int) -> Callable[[], list[int]]:
    return lambda: descendants(pid)


# which setups each target needs (a --only run starts nothing else)
NEEDS = {
    "direct-uvicorn": {"uvicorn-tcp"}, "aioproxy": {"uvicorn-uds", "aioproxy"}, "aioproxy2": {"uvicorn-uds", "aioproxy2"},
    "nginx-uvicorn": {"uvicorn-uds", "nginx"}, "pl-static": {"pl-asgi"}, "nginx-static": {"nginx", "pl-asgi"},
    "pl-tls": {"pl-asgi"}, "nginx-tls": {"nginx", "pl-asgi"}, "pl-metrics": {"pl-metrics"},
    **{f"pl-{k}": {f"pl-{k}"} for k in APP_TYPES}, **{f"nginx-pl-{k}": {"nginx", f"pl-{k}"} for k in APP_TYPES},
    **{f"{k}-direct": {f"pl-{k}"} for k in APP_TYPES}, **{f"passenger-{k}": {f"passenger-{k}"} for k in PASSENGER_APPS},
}


class Setups:
    def __init__(self, env: Env, only: set[str] | None = None):
        self.env = env
        unknown = sorted((only or set()) - set(NEEDS))
        if unknown:
            raise SystemExit(f"bench: unknown target(s) {', '.join(unknown)}; known: {', '.join(NEEDS)}")
        self.only = only
        self.needed = set().union(*(NEEDS[t] for t in (only or NEEDS)))
        self.pl: dict[str, PLInstance] = {}
        self.passenger: dict[str, object] = {}
        self.svc: dict = {}
        self.targets: list[Target] = []
        self.kinds = ["asgi", "wsgi"] + [k for k in ("rack", "node") if APP_TYPES[k][0] in env.types]
        for k in ("rack", "node"):
            if k not in self.kinds:
                env.notes.append(f"{k}: skipped passenger-lite's {k} targets: this checkout has no "
                                 f"{APP_TYPES[k][0]} spawner yet (Passenger's {k} figures are still measured)")

    def need(self, name: str) -> bool:
        return name in self.needed

    def wanted(self, target: str) -> bool:
        return self.only is None or target in self.only

    def start(self) -> None:
        self._start_reference()
        self._start_pl()
        self._start_passenger()
        self._wait()
        if self.need("nginx"):
            self._start_nginx()
        for s in self.env.procs.services:
            s.remember()
        self._targets()
        self._optional_targets()
        self.targets = [t for t in self.targets if self.wanted(t.name)]
        for t in self.targets:
            t.pids = {"front": t.front(), "workers": t.workers()}

    # ---------------------------------------------------------------- start

    def _start_reference(self) -> None:
        env, procs, run = self.env, self.env.procs, self.env.run
        sock = run / "sock/uvicorn.sock"
        if self.need("uvicorn-tcp"):
            self.svc["uvicorn-tcp"] = procs.start("uvicorn-tcp", uvicorn_argv(env, "--host", H, "--port",
                                                                              str(P["direct-uvicorn"])))
        if self.need("uvicorn-uds"):
            self.svc["uvicorn-uds"] = procs.start("uvicorn-uds", uvicorn_argv(env, "--uds", str(sock)))
        aio = [env.py, str(HERE / "vendor" / "aioproxy.py"), "--upstream", f"unix:{sock}"]
        if self.need("aioproxy"):
            self.svc["aioproxy"] = [procs.start("aioproxy", aio + ["--port", str(P["aioproxy"])])]
        if self.need("aioproxy2"):
            self.svc["aioproxy2"] = [procs.start(f"aioproxy2-{i}", aio + ["--port", str(P["aioproxy2"]), "--reuse-port"])
                                     for i in "ab"]

    def _start_pl(self) -> None:
        env, run = self.env, self.env.run
        tls = {"cert": str(run / "tls/cert.pem"), "key": str(run / "tls/key.pem")}
        plan = {"asgi": pl_site([f"{H}:{P['pl-asgi']}", {"address": f"{H}:{P['pl-tls']}", "tls": tls}],
                                [pl_app(env, "asgi")])}
        for k in self.kinds[1:]:
            plan[k] = pl_site([f"{H}:{P['pl-' + k]}"], [pl_app(env, k)])
        plan["metrics"] = pl_site([f"{H}:{P['pl-metrics']}"], [pl_app(env, "asgi")],
                                  metrics_listen=f"{H}:{P['pl-metrics-scrape']}")
        for k, cfg in plan.items():
            if self.need(f"pl-{k}"):
                self.pl[k] = PLInstance(f"pl-{k}", run / "pl" / k, cfg)
                self.pl[k].start(env.procs, env.cli)

    def _start_passenger(self) -> None:
        env, run = self.env, self.env.run
        for k, app in PASSENGER_APPS.items():
            if self.need(f"passenger-{k}"):
                s = env.procs.start(f"passenger-{k}", passenger_argv(env, P[f"passenger-{k}"], run / "instreg", k),
                                    cwd=env.apps / app, env=passenger_env(env, run / "tmp", run / "instreg"))
                s.pid_files.append(run / f"passenger-{k}.pid")
                self.passenger[k] = s

    def _wait(self) -> None:
        for inst in self.pl.values():
            inst.wait_ready()
        for name in ("direct-uvicorn", "aioproxy", "aioproxy2", "passenger-wsgi", "passenger-rack", "passenger-node"):
            if self.need(name.replace("direct-uvicorn", "uvicorn-tcp")):
                wait_http(f"{H}:{P[name]}", timeout=90)
        if self.need("uvicorn-uds"):
            wait_http(f"unix:{self.env.run / 'sock/uvicorn.sock'}")

    def _start_nginx(self) -> None:
        env, run = self.env, self.env.run
        upstreams = {}
        if "uvicorn-uds" in self.svc:
            upstreams["uvicorn"] = [f"unix:{run / 'sock/uvicorn.sock'}"]
        for k, inst in self.pl.items():
            if k != "metrics":
                upstreams[f"pl_{k}"] = inst.worker_sockets(k)
        (run / "nginx/nginx.conf").write_text(nginx_conf(env, upstreams))
        self.svc["nginx"] = env.procs.start("nginx", ["nginx", "-p", str(run / "nginx") + "/", "-c",
                                                      str(run / "nginx/nginx.conf"), "-e", str(run / "nginx/error.log")],
                                            stop_signal=signal.SIGQUIT)
        if "uvicorn" in upstreams:
            wait_http(f"{H}:{P['nginx-uvicorn']}")
        for k in self.pl:
            if f"pl_{k}" in upstreams:
                wait_http(f"{H}:{P['nginx-pl-' + k]}")

    # ---------------------------------------------------------------- targets

    def _targets(self) -> None:
        svc, add = self.svc, self.targets.append
        ngx = _kids(svc["nginx"].pid) if "nginx" in svc else None
        uvk = _tree(svc["uvicorn-uds"].pid) if "uvicorn-uds" in svc else None
        if "uvicorn-tcp" in svc:
            add(Target("direct-uvicorn", "uvicorn --workers 2, TCP, no proxy", f"{H}:{P['direct-uvicorn']}",
                       ["c1", "c32"], workers=_tree(svc["uvicorn-tcp"].pid)))
        if "aioproxy" in svc:
            add(Target("aioproxy", "aiohttp proxy (anchors' aioproxy.py), 1 proc -> uvicorn 2 workers UDS",
                       f"{H}:{P['aioproxy']}", ["c1", "c32"], front=lambda: [s.pid for s in svc["aioproxy"]],
                       workers=uvk))
        if "aioproxy2" in svc:
            add(Target("aioproxy2", "the same, 2 procs SO_REUSEPORT", f"{H}:{P['aioproxy2']}", ["c32"],
                       front=lambda: [s.pid for s in svc["aioproxy2"]], workers=uvk))
        if ngx and uvk:
            add(Target("nginx-uvicorn", "nginx 1 worker -> uvicorn 2 workers UDS (keepalive)",
                       f"{H}:{P['nginx-uvicorn']}", ["c1", "c32"], front=ngx, workers=uvk))
        for k, inst in self.pl.items():
            if k == "metrics":
                continue
            loads = ["c1", "c32"] + (["p1"] if k in ("asgi", "wsgi") else []) + (["1m"] if k == "asgi" else [])
            add(Target(f"pl-{k}", f"passenger-lite, {APP_TYPES[k][0]}, 2 workers", f"{H}:{P['pl-' + k]}", loads,
                       front=lambda i=inst: [i.pid], workers=inst.worker_tree))
            if ngx:
                add(Target(f"nginx-pl-{k}", f"nginx 1 worker -> passenger-lite's 2 {k} worker sockets",
                           f"{H}:{P['nginx-pl-' + k]}", loads, front=ngx, workers=inst.worker_tree))
            if k in ("asgi", "wsgi"):
                add(Target(f"{k}-direct", f"probe straight onto passenger-lite's {k} worker #1 (UDS)",
                           inst.worker_sockets(k)[0], ["p1"], workers=inst.worker_tree))
        for k, s in self.passenger.items():
            def core(s=s):
                return [p for p in s.known if cmdline(p) == "Passenger core"]

            def apps(core=core):
                kids = children_map()
                return [c for p in core() for c in descendants(p, kids)]

            add(Target(f"passenger-{k}", f"Passenger 6.0.17 builtin engine, {k}, 2 processes",
                       f"{H}:{P['passenger-' + k]}", ["c1", "c32"], front=core, workers=apps))

    def _optional_targets(self) -> None:
        """Targets of features other engineers are adding: measured once present, else a note."""
        env, add = self.env, self.targets.append
        ngx = _kids(self.svc["nginx"].pid) if "nginx" in self.svc else None
        asgi = self.pl.get("asgi")
        if asgi is not None and (self.wanted("pl-static") or self.wanted("nginx-static")):
            try:
                st, body = http_get(f"{H}:{P['pl-asgi']}", "/1m.bin")
                static_ok = st == 200 and body == (env.apps / "asgi/public/1m.bin").read_bytes()
            except OSError:
                static_ok = False
            if static_ok:
                add(Target("pl-static", "passenger-lite serving public/1m.bin", f"{H}:{P['pl-asgi']}", ["static"],
                           front=lambda: [asgi.pid]))
                if ngx:
                    add(Target("nginx-static", "nginx serving the same file (sendfile on)", f"{H}:{P['nginx-static']}",
                               ["static"], front=ngx))
            else:
                env.notes.append("static: skipped: passenger-lite does not serve the app's public/ folder yet "
                                 "(GET /1m.bin did not return the file)")
        if asgi is not None and (self.wanted("pl-tls") or self.wanted("nginx-tls")):
            try:
                tls_ok = http_get(f"{H}:{P['pl-tls']}", "/", tls=True)[0] == 200
            except OSError as e:
                tls_ok = False
                env.notes.append(f"tls: skipped: passenger-lite's TLS listener did not answer ({e})")
            if tls_ok:
                add(Target("pl-tls", "passenger-lite, TLS listener, asgi 2 workers", f"{H}:{P['pl-tls']}", ["tls"],
                           front=lambda: [asgi.pid], workers=asgi.worker_tree))
                if ngx:
                    add(Target("nginx-tls", "nginx TLS -> passenger-lite's asgi worker sockets",
                               f"{H}:{P['nginx-tls']}", ["tls"], front=ngx, workers=asgi.worker_tree))
        m = self.pl.get("metrics")
        if m is not None:
            try:
                metrics_ok = http_get(f"{H}:{P['pl-metrics-scrape']}", "/metrics")[0] == 200
            except OSError:
                metrics_ok = False
            if metrics_ok:
                add(Target("pl-metrics", "passenger-lite, asgi 2 workers, metrics_listen set", f"{H}:{P['pl-metrics']}",
                           ["c32"], front=lambda: [m.pid], workers=m.worker_tree))
            else:
                env.notes.append("metrics: skipped: nothing answers /metrics on metrics_listen yet")
