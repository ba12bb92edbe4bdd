"""The front process's memory: RSS with 6 apps configured and idle, and how much it grows while a
large upload and a large download (1 GiB each in a full run) pass through it at the same time.
"""
from __future__ import annotations

import socket
import subprocess
import threading
import time

import psutil

from loadgen import http_get
from plinstance import PLInstance
from setups import H, P, Env, pl_app, pl_site

CHUNK = 1 << 20
MIB = 1 << 20


def _read_head(f) -> tuple[int, dict[bytes, bytes]]:
    status = int(f.readline().split()[1])
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            return status, headers
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip().lower()


def _upload(port: int, host: str, n: int, out: dict) -> None:
    t = time.monotonic()
    s = socket.create_connection((H, port))
    try:
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {n}\r\n"
                  f"Content-Type: application/octet-stream\r\n\r\n".encode())
        block = b"u" * CHUNK
        left = n
        while left:
            k = min(left, CHUNK)
            s.sendall(block if k == CHUNK else block[:k])
            left -= k
        f = s.makefile("rb")
        out["status"], headers = _read_head(f)
        body = f.read(int(headers.get(b"content-length", 0)))
        out["ok"] = out["status"] == 200 and body.strip() == str(n).encode()
    except OSError as e:
        out["ok"], out["error"] = False, str(e)
    finally:
        s.close()
        out["s"] = time.monotonic() - t
        out["mbs"] = n / out["s"] / 1e6


def _download(port: int, host: str, n: int, out: dict) -> None:
    t = time.monotonic()
    s = socket.create_connection((H, port))
    try:
        s.sendall(f"GET /download?bytes={n} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        f = s.makefile("rb", buffering=CHUNK)
        out["status"], headers = _read_head(f)
        chunked = headers.get(b"transfer-encoding") == b"chunked"
        buf = bytearray(CHUNK)
        got = 0
        if chunked:
            while True:
                size = int(f.readline().split(b";")[0], 16)
                if size == 0:
                    break
                left = size
                while left:
                    k = f.readinto(memoryview(buf)[:min(left, CHUNK)])
                    if not k:
                        raise ConnectionError("download cut short")
                    left -= k
                got += size
                f.readline()
        else:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                got += k
        out["ok"] = out["status"] == 200 and got == n
        out["bytes"] = got
    except (OSError, ValueError) as e:
        out["ok"], out["error"] = False, str(e)
    finally:
        s.close()
        out["s"] = time.monotonic() - t
        out["mbs"] = n / out["s"] / 1e6


def import_rss(py: str) -> int | None:
    """Peak RSS of an interpreter that only imports what the front process imports."""
    code = ("import resource, passenger_lite.manager.runtime, passenger_lite.spawners.registry as r; "
            "r.default_registry(); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    p = subprocess.run([py, "-c", code], capture_output=True, text=True)
    return int(p.stdout.strip()) * 1024 if p.returncode == 0 and p.stdout.strip().isdigit() else None


def measure(env: Env, nbytes: int) -> dict:
    kinds = ["asgi", "wsgi"]
    apps = [pl_app(env, kinds[i % 2], name=f"app{i + 1}", n=1, hosts=[f"app{i + 1}.bench"]) for i in range(6)]
    for a in apps:
        a["max_processes"] = 1
    inst = PLInstance("mem-pl", env.run / "pl" / "mem", pl_site([f"{H}:{P['mem-pl']}"], apps))
    svc = inst.start(env.procs, env.cli)
    res: dict = {"apps": len(apps), "transfer_bytes": nbytes, "import_rss": import_rss(env.py)}
    try:
        inst.wait_ready()
        for a in apps:  # every app has served requests: the proxy's code paths are loaded
            for _ in range(20):
                http_get(f"{H}:{P['mem-pl']}", "/", host=a["hosts"][0])
        time.sleep(1.0)
        front = psutil.Process(svc.pid)
        res["idle_rss"] = front.memory_info().rss
        samples = [res["idle_rss"]]
        up, down = {}, {}
        threads = [threading.Thread(target=_upload, args=(P["mem-pl"], "app1.bench", nbytes, up)),
                   threading.Thread(target=_download, args=(P["mem-pl"], "app1.bench", nbytes, down))]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            samples.append(front.memory_info().rss)
            time.sleep(0.02)
        for t in threads:
            t.join()
        samples.append(front.memory_info().rss)
        res.update(rss_before=samples[0], rss_max=max(samples), rss_after=samples[-1],
                   growth=max(samples) - samples[0], samples=len(samples), upload=up, download=down)
    finally:
        env.procs.stop(svc)
    return res
