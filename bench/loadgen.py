"""Load: wrk (Debian's) for throughput and latency, and a one-connection probe that can also talk
to a worker's Unix socket directly (wrk cannot), for the latency a hop adds over the same worker.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import statistics
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRK_LUA = HERE / "vendor" / "wrk_json.lua"

# name -> (threads, connections, path suffix)
LOADS = {
    "c1": (1, 1, ""),        # latency at one connection
    "c32": (2, 32, ""),      # throughput (the anchors' -t2 -c32)
    "1m": (1, 8, "1m"),      # 1 MiB response bodies
    "static": (1, 8, "1m.bin"),  # 1 MiB file from public/
    "tls": (2, 32, ""),      # c32 over TLS
}


def wrk(url: str, load: str, dur: float, host: str | None = None) -> dict:
    threads, conns, suffix = LOADS[load]
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{dur:g}s", "--latency", "--timeout", "5s", "-s", str(WRK_LUA)]
    if host:
        argv += ["-H", f"Host: {host}"]
    argv.append(url + suffix)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    line = next((x[5:] for x in out.splitlines() if x.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk {' '.join(argv[1:])}: no result (exit {p.returncode}):\n{out[-600:]}")
    w = json.loads(line)
    d = w["duration_us"] / 1e6
    errors = sum(w[k] for k in ("err_connect", "err_read", "err_write", "err_timeout"))
    return {"rps": w["requests"] / d, "mbs": w["bytes"] / d / 1e6, "p50": w["p50"], "p90": w["p90"],
            "p99": w["p99"], "errors": errors, "non2xx": w["err_status"], "requests": w["requests"],
            "client_cpu_s": ru.ru_utime + ru.ru_stime}


# ------------------------------------------------------------------------------ one-connection probe


def _connect(address: str, tls: bool = False) -> socket.socket:
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address[5:])
    else:
        host, _, port = address.rpartition(":")
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s)
    s.settimeout(5)
    return s


def _response_end(buf: bytearray, n: int) -> tuple[int, bool]:
    """(length of the whole response once its head is in buf[:n], else -1; status is 200)."""
    head_end = buf.find(b"\r\n\r\n", 0, n)
    if head_end < 0:
        return -1, True
    head = bytes(buf[:head_end]).lower()
    i = head.find(b"content-length:")
    if i < 0:
        raise ConnectionError("response without Content-Length")
    j = head.find(b"\r\n", i)
    return head_end + 4 + int(head[i + 15:j if j > 0 else len(head)]), head.startswith(b"http/1.1 200")


def probe(address: str, dur: float, host: str = "bench.test", path: str = "/") -> dict:
    """Sequential keep-alive GETs on one connection for `dur` seconds; per-request wall time.
    The client's own cost is the same whatever it talks to, so differences are the server side's.
    A connection the server closes (nginx: keepalive_requests) is opened again; that request is not timed."""
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    s = _connect(address)
    buf = bytearray(65536)
    view = memoryview(buf)
    lat: list[int] = []
    clock = time.perf_counter_ns
    end = clock() + int(dur * 1e9)
    bad = reconnects = 0
    try:
        while True:
            t0 = clock()
            n, need, ok = 0, -1, True
            try:
                s.sendall(req)
                while need < 0 or n < need:
                    k = s.recv_into(view[n:])
                    if k == 0:
                        break
                    n += k
                    if need < 0:
                        need, ok = _response_end(buf, n)
            except (ConnectionResetError, BrokenPipeError):
                need = -1
            t1 = clock()
            if need < 0 or n < need:
                s.close()
                reconnects += 1
                if reconnects > 100:
                    raise ConnectionError(f"{address} keeps closing the connection")
                s = _connect(address)
                continue
            lat.append(t1 - t0)
            bad += not ok
            if t1 > end:
                break
    finally:
        s.close()
    q = statistics.quantiles(lat, n=100) if len(lat) > 2 else [lat[0]] * 99
    return {"rps": len(lat) / dur, "p50": statistics.median(lat) / 1000, "p90": q[89] / 1000, "p99": q[98] / 1000,
            "requests": len(lat), "errors": 0, "non2xx": bad, "mbs": 0.0, "client_cpu_s": None}


def http_get(address: str, path: str = "/", host: str = "bench.test", tls: bool = False,
             timeout: float = 5) -> tuple[int, bytes]:
    """One GET on a fresh connection (readiness checks, feature probes): (status, body)."""
    s = _connect(address, tls)
    s.settimeout(timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        while True:
            k = s.recv(262144)
            if not k:
                break
            data += k
    finally:
        s.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1."):
        raise ConnectionError(f"{address}{path}: not an HTTP response")
    status = int(head.split(None, 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return status, body


def _unchunk(b: bytes) -> bytes:
    out = bytearray()
    i = 0
    while True:
        j = b.find(b"\r\n", i)
        size = int(b[i:j].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += b[j + 2:j + 2 + size]
        i = j + 2 + size + 2


def wait_http(address: str, path: str = "/", host: str = "bench.test", timeout: float = 60, tls: bool = False,
              ok=lambda status: status == 200) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            st, _ = http_get(address, path, host, tls, timeout=2)
            if ok(st):
                return
            last = f"status {st}"
        except (OSError, ValueError) as e:
            last = str(e) or type(e).__name__
        time.sleep(0.05)
    raise RuntimeError(f"{address}{path} not ready after {timeout:g} s ({last})")
