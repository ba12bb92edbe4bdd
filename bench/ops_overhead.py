#!/usr/bin/env python3
"""What metrics and the access log cost the proxy (issue 6): same app, same load, three configs.

    python bench/ops_overhead.py [--dur 5] [--reps 5]

Three passenger-lite instances serve the bench's ASGI hello app with 2 workers each: `plain`
(neither), `metrics` (metrics_listen set, scraped once a second during the load, as a busy
Prometheus would) and `metrics+log` (and an access log file). wrk runs c32 against each in turn,
interleaved, `--reps` times. Reported per config, as medians: requests/s, and the front process's
CPU time per request (user + system, from /proc), which the other tenants of a shared machine
disturb much less than throughput. Then the observers alone, timed in-process on a synthetic
finished exchange: the per-request work each one adds.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path
from types import SimpleNamespace

import psutil
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import wrk  # noqa: E402

H = "127.0.0.1"
PORTS = {"plain": 18161, "metrics": 18162, "metrics+log": 18163}
SCRAPE = {"metrics": 18164, "metrics+log": 18165}


def site(name: str, folder: Path) -> dict:
    app = {"name": "asgi", "root": str(HERE / "apps" / "asgi"), "type": "python-asgi", "entry": "asgi:app",
           "min_processes": 2, "max_processes": 2, "python": sys.executable}
    if os.geteuid() == 0:
        app["user"] = "root"
    cfg = {"listen": [f"{H}:{PORTS[name]}"], "apps": [app]}
    if name in SCRAPE:
        cfg["metrics_listen"] = f"{H}:{SCRAPE[name]}"
    if name == "metrics+log":
        cfg["access_log"] = str(folder / "access.log")
    return cfg


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"passenger-lite exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection(H, port, timeout=2)
            c.request("GET", "/")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nothing answers on {port}")


def scraper(port: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            c = http.client.HTTPConnection(H, port, timeout=5)
            c.request("GET", "/metrics")
            c.getresponse().read()
            c.close()
        except OSError:
            pass


def front_cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def observers_alone(n: int = 200_000) -> dict:
    """Nanoseconds per call of each observer, on a synthetic finished exchange."""
    from passenger_lite.manager.accesslog import AccessLog
    from passenger_lite.manager.metrics import Metrics

    loop = asyncio.new_event_loop()
    worker = SimpleNamespace(id=1, pid=4242)
    ex = SimpleNamespace(client=SimpleNamespace(peer_ip="127.0.0.1"), method="GET", target="/posts?page=2",
                         http_version=(1, 1), host_header="blog.test",
                         resp_bytes=5120, app_name="blog", last_worker=worker, t0=loop.time() - 0.004,
                         t_worker=loop.time() - 0.003, request_id="abc-1")
    runtime = SimpleNamespace(site=SimpleNamespace(config=SimpleNamespace(log_format="text", access_log=None),
                                                   metrics_address=None), poolset=None, proxy=None)
    m = Metrics(runtime)
    m._loop = loop
    out = {"metrics": timeit.timeit(lambda: m.observe(ex, 200), number=n) / n * 1e9}
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("text", "json"):
            runtime.site.config.log_format = fmt
            a = AccessLog(runtime, Path(d) / f"{fmt}.log")
            a._loop = loop
            a._open()
            out[f"access log ({fmt})"] = timeit.timeit(lambda: a.observe(ex, 200), number=n) / n * 1e9
            a.flush()
    loop.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dur", type=float, default=5, help="seconds per wrk run (default 5)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pl-ops-bench-"))
    cli = [sys.executable, "-m", "passenger_lite.manager.cli"]
    procs: dict[str, subprocess.Popen] = {}
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in PORTS}
    try:
        for name in PORTS:
            folder = base / name.replace("+", "-")
            folder.mkdir()
            (folder / "sites.yaml").write_text(yaml.safe_dump(site(name, folder)))
            log = open(folder / "server.log", "wb")
            procs[name] = subprocess.Popen(cli + ["start", "--config", str(folder / "sites.yaml")], cwd=folder,
                                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for name, p in procs.items():
            wait_ready(PORTS[name], p)
        for name in PORTS:  # warm-up
            wrk(f"http://{H}:{PORTS[name]}/", "c32", 1)
        for rep in range(a.reps):
            for name, p in procs.items():
                stop = threading.Event()
                t = None
                if name in SCRAPE:
                    t = threading.Thread(target=scraper, args=(SCRAPE[name], stop), daemon=True)
                    t.start()
                cpu0 = front_cpu(p.pid)
                r = wrk(f"http://{H}:{PORTS[name]}/", "c32", a.dur)
                cpu = front_cpu(p.pid) - cpu0
                stop.set()
                if t is not None:
                    t.join()
                if r["errors"] or r["non2xx"]:
                    print(f"  {name}: {r['errors']} errors, {r['non2xx']} non-2xx", file=sys.stderr)
                results[name].append((r["rps"], cpu / max(r["requests"], 1) * 1e6))
                print(f"rep {rep + 1} {name:12} {r['rps']:9.0f} req/s  {results[name][-1][1]:6.1f} us front CPU/req",
                      file=sys.stderr)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"\nc32, ASGI hello, 2 workers, {a.reps} x {a.dur:g} s interleaved, medians; machine load "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    plain_rps = statistics.median(x[0] for x in results["plain"])
    plain_cpu = statistics.median(x[1] for x in results["plain"])
    print(f"{'config':14}{'req/s':>10}{'vs plain':>10}{'front CPU/req':>16}{'vs plain':>10}")
    for name, rows in results.items():
        rps = statistics.median(x[0] for x in rows)
        cpu = statistics.median(x[1] for x in rows)
        print(f"{name:14}{rps:10.0f}{rps / plain_rps:9.2f}x{cpu:13.1f} us{cpu / plain_cpu:9.2f}x")
    print("\nper-request work of each observer alone (in-process, synthetic exchange):")
    for name, ns in observers_alone().items():
        print(f"  {name:20} {ns / 1000:6.2f} us")


if __name__ == "__main__":
    main()
