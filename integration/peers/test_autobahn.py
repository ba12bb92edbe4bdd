"""Issue 11 item 14b: the Autobahn WebSocket test suite's fuzzingclient (`wstest`, Python 2.7, in
the virtualenv .ci/setup-peers makes) against a plain echo app in each language, directly and
through passenger-lite, in one wstest run per language (two agents: `direct`, `passenger-lite`).

Fails on any case FAILED through passenger-lite but not directly, and on any case that ends through
passenger-lite without the close code it gets directly. OK and NON-STRICT (and INFORMATIONAL) flip
with timing even directly, as does a close code lost directly: those are printed, not failed on.

The cases (CASES below; ~10-20 s a run instead of ~40 s, and minutes with compression): every
case of sections 1-7 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close
handshake) and 10 (auto-fragmentation), but 6.4.1-6.4.4 (fail-fast on invalid UTF-8 sent in pieces:
each sleeps 2 s by design and is NON-STRICT/OK by timing alone); from section 9 (limits and
performance) the single large messages, 64 KiB to 16 MiB text and binary (9.1.*, 9.2.*; for Rack
only up to 4 MiB: its Ruby unmasking takes ~3 s a message past that), and 1,000 small text and
binary messages in a row (9.7.1, 9.8.1); not 9.3-9.6 (the same large messages in fragments or
written in small chunks: ~15 s of throughput a run) nor 12 and 13 (permessage-deflate: minutes a
run, and the Rack echo does not offer it).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import HERE, PEERS_DIR, need
from harness import APPS, app_config, free_port
from rawhttp import poll_until

CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*", "9.1.*", "9.2.*", "9.7.1", "9.8.1"]
EXCLUDE = ["6.4.*"]
EXCLUDE_BY_LANG = {"rack": ["9.1.5", "9.1.6", "9.2.5", "9.2.6"]}

ECHO_APPS = {  # language -> (folder in integration/peers/apps, passenger-lite app keys)
    "asgi": ("ws_echo_asgi", {"type": "python-asgi", "python": sys.executable}),
    "node": ("ws_echo_node", {"type": "node"}),
    "rack": ("ws_echo_rack", {"type": "ruby-rack", "concurrency": 4}),
}


def direct_command(lang: str, port: int) -> list[str]:
    if lang == "asgi":
        return [sys.executable, "-m", "uvicorn", "asgi:app", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning"]
    if lang == "node":
        return [shutil.which("node") or "node", "app.js"]
    return [shutil.which("puma") or "puma", "--quiet", "-t", "4:4", "-b", f"tcp://127.0.0.1:{port}", "config.ru"]


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the direct echo server exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the direct echo server did not answer on {port} within {timeout} s")


def app_root(lang: str, tmp_path):
    folder = ECHO_APPS[lang][0]
    root = tmp_path / folder
    shutil.copytree(HERE / "apps" / folder, root)
    if lang == "node":
        modules = APPS / "node_ws" / "node_modules"
        if not modules.is_dir():
            pytest.fail("run `npm ci` in tests/apps/node_ws (.ci/setup does): the echo uses its `ws`")
        (root / "node_modules").symlink_to(modules)
    return root


@pytest.mark.parametrize("lang", list(ECHO_APPS))
def test_autobahn_fuzzingclient_through_passenger_lite_as_directly(make_server, tmp_path, lang):
    wstest = need(PEERS_DIR / "autobahn-py27" / "bin" / "wstest", "the Autobahn test suite")
    root = app_root(lang, tmp_path)
    s = make_server({"apps": [app_config("ws", root, **ECHO_APPS[lang][1])]})
    port = free_port()
    direct = subprocess.Popen(direct_command(lang, port), cwd=root, env=dict(os.environ, PORT=str(port)),
                              stdout=open(tmp_path / "direct.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_http(port, direct)
        spec = {"outdir": str(tmp_path / "report"), "cases": CASES, "exclude-cases": EXCLUDE + EXCLUDE_BY_LANG.get(lang, []),
                "exclude-agent-cases": {},
                "servers": [{"agent": "direct", "url": f"ws://127.0.0.1:{port}/"},
                            {"agent": "passenger-lite", "url": f"ws://127.0.0.1:{s.port}/"}]}
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        with open(tmp_path / "wstest.log", "wb") as log:
            r = subprocess.run([str(wstest), "-m", "fuzzingclient", "-s", "spec.json"], cwd=tmp_path,
                               stdout=log, stderr=subprocess.STDOUT, timeout=300)
        index = tmp_path / "report" / "index.json"
        assert r.returncode == 0 and index.exists(), \
            f"wstest exited {r.returncode}:\n{(tmp_path / 'wstest.log').read_text()[-3000:]}"
    finally:
        os.killpg(direct.pid, 9)
        direct.wait()
    report = json.loads(index.read_text())
    d, p = report["direct"], report["passenger-lite"]
    assert len(d) > 240 and set(d) == set(p), (len(d), set(d) ^ set(p))
    failed, close_lost, flips = [], [], []
    for case in sorted(d, key=lambda c: [int(x) for x in c.split(".")]):
        a, b = d[case], p[case]
        if b["behavior"] == "FAILED" and a["behavior"] != "FAILED":
            failed.append(f"{case}: FAILED ({b['behaviorClose']}), directly {a['behavior']}")
        elif a["remoteCloseCode"] != b["remoteCloseCode"]:
            line = f"{case}: close code {b['remoteCloseCode']}, directly {a['remoteCloseCode']}"
            if a["remoteCloseCode"] is None:  # lost directly (timing), arrived through passenger-lite
                flips.append(line)
            else:
                close_lost.append(line)
        elif a["behavior"] != b["behavior"]:
            flips.append(f"{case}: {a['behavior']} directly, {b['behavior']} through passenger-lite")
    count = {agent: sum(1 for v in r.values() if v["behavior"] not in ("FAILED", "UNIMPLEMENTED"))
             for agent, r in report.items()}
    print(f"\nautobahn {lang}: {len(d)} cases; not FAILED: directly {count['direct']}, "
          f"through passenger-lite {count['passenger-lite']}")
    for line in flips:
        print(f"  differs, not failed on: {line}")
    assert not failed and not close_lost, (failed + close_lost, s.logs()[-3000:])
    # after the whole run the app is idle, nothing queued, and serves a request at once
    poll_until(lambda: (st := s.app_status("ws"))["queue"] == 0 and all(w["in_flight"] == 0 for w in st["workers"]),
               timeout=10, what="nothing in flight or queued after the run")
    assert s.get("/", timeout=5)[0] == 200
