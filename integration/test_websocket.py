"""Issue 7 item 1: WebSockets through the proxy to ASGI (uvicorn), Node (ws) and Rack (puma hijack)
apps, with the real CLI, real workers and the `websockets` client."""
import hashlib
import json
import os
import signal
import socket
import threading
import time

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from checks import assert_served_after
from harness import APPS, app_config, copy_app
from rawhttp import poll_until

WS_APPS = {  # language -> (folder in tests/apps, app type)
    "asgi": ("starlette_app", "python-asgi"),
    "node": ("node_ws", "node"),
    "rack": ("rack_ws", "ruby-rack"),
}


def spawner_types() -> set:
    from passenger_lite.spawners.registry import default_registry

    return set(default_registry().types())


def ws_app(lang: str, apps_dir, **kw) -> dict:
    folder, kind = WS_APPS[lang]
    if kind not in spawner_types():
        pytest.skip(f"no {kind} spawner installed yet")
    if lang == "node":
        if not (APPS / folder / "node_modules").is_dir():
            pytest.fail(f"run `npm ci` in tests/apps/{folder} (.ci/setup-tests does)")
        root = APPS / folder  # used in place: it is not edited, and its node_modules stay with it
    else:
        root = copy_app(folder, apps_dir)
    return app_config("ws", root, type=kind, **kw)


def ws_connect(s, path: str = "/ws", **kw):
    kw.setdefault("max_size", None)
    return connect(f"ws://127.0.0.1:{s.port}{path}", proxy=None, open_timeout=20, **kw)


def in_flight(s) -> list[int]:
    return [w["in_flight"] for w in s.app_status("ws")["workers"] if w["state"] == "ready"]


@pytest.mark.parametrize("lang", ["asgi", "node", "rack"])
def test_websocket_echo_both_ways_with_close_codes(make_server, apps_dir, lang):
    s = make_server({"apps": [ws_app(lang, apps_dir, path="/app")]})
    with ws_connect(s, "/app/ws") as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo: hello"
        # one worker is checked out for the whole life of the tunnel
        assert in_flight(s) == [1]
        if lang != "asgi":  # the Starlette test app echoes text only
            data = os.urandom(3 * 1024 * 1024)  # larger than every buffer on the way: flow control
            ws.send(data)
            assert hashlib.sha256(ws.recv(timeout=30)).digest() == hashlib.sha256(data).digest()
        text = "x" * 900_000
        ws.send(text)
        assert ws.recv(timeout=30) == "echo: " + text
        ws.send("close")  # the app closes with 4001: the code reaches the client unchanged
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4001
    poll_until(lambda: in_flight(s) == [0], what="the worker to be given back")
    assert_served_after(s, "ws", path="/app/", workers=1)
    if lang != "asgi":
        with ws_connect(s, "/app/ws") as ws:  # the client closes with 4002: the app sees 4002
            ws.send("x")
            ws.recv(timeout=10)
            ws.close(4002, "bye")
        last = poll_until(lambda: json.loads(s.get("/app/last-close")[2]), what="the app to see the close")
        assert last == {"code": 4002, "reason": "bye"}
    assert s.get("/app/")[0] == 200


def test_only_websocket_upgrades_with_a_key_are_tunnelled(make_server, apps_dir):
    s = make_server({"apps": [app_config("ws", copy_app("starlette_app", apps_dir))]})
    head = b"Host: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    # no Sec-WebSocket-Key, or not GET: 400, and the worker never sees it
    assert s.raw(b"GET /ws HTTP/1.1\r\n" + head + b"\r\n").startswith(b"HTTP/1.1 400 ")
    assert s.raw(b"POST /ws HTTP/1.1\r\n" + head + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Content-Length: 0\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # any other upgrade (h2c...) is a plain request: the Upgrade header never reaches the app
    out = s.raw(b"GET /env HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    headers = json.loads(out.split(b"\r\n\r\n", 1)[1])["headers"]
    assert "upgrade" not in headers and "http2-settings" not in headers
    # bytes the client sends before the worker's 101 arrive after it, in order
    key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    frame = _masked_text(b"early")
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"GET /ws HTTP/1.1\r\n" + head + key + b"\r\n" + frame)
        out = b""
        while b"echo: early" not in out:
            chunk = c.recv(65536)
            assert chunk, out
            out += chunk
        assert out.startswith(b"HTTP/1.1 101 ")
        c.sendall(_masked_close(1000))


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _masked_text(text: bytes) -> bytes:
    return _masked(0x1, text)


def _masked_close(code: int) -> bytes:
    return _masked(0x8, code.to_bytes(2, "big"))


def test_open_websocket_keeps_a_concurrency_1_worker_checked_out(make_server, apps_dir):
    s = make_server({"apps": [app_config("ws", copy_app("starlette_app", apps_dir), concurrency=1,
                                         min_processes=1, max_processes=2)]})
    first = s.app_status("ws")["workers"][0]
    with ws_connect(s) as ws:
        ws.send("a")
        assert ws.recv(timeout=10) == "echo: a"
        # the only worker holds a WebSocket: it is full, so a request gets a second worker
        env = s.get_json("/env")
        assert env["pid"] != first["pid"]
        workers = {w["pid"]: w for w in s.app_status("ws")["workers"]}
        assert workers[first["pid"]]["in_flight"] == 1
        ws.send("b")
        assert ws.recv(timeout=10) == "echo: b"
    poll_until(lambda: all(n == 0 for n in in_flight(s)), what="the WebSocket's worker to be free")


def test_websockets_scale_out_a_concurrency_0_app(make_server, apps_dir):
    # Passenger's #2433: open WebSockets must not pin a concurrency-0 app to one process
    s = make_server({"apps": [app_config("ws", copy_app("starlette_app", apps_dir), concurrency=0,
                                         scale_threshold=2, min_processes=1, max_processes=2)]})
    socks = []
    try:
        for i in range(3):
            ws = ws_connect(s).__enter__()
            socks.append(ws)
            ws.send(str(i))
            assert ws.recv(timeout=10) == f"echo: {i}"
        poll_until(lambda: len(in_flight(s)) == 2, timeout=30, what="a second worker")
        ws = ws_connect(s).__enter__()  # the least busy worker (the new one) takes it
        socks.append(ws)
        ws.send("new")
        assert ws.recv(timeout=10) == "echo: new"
        assert sorted(in_flight(s)) == [1, 3]
    finally:
        for ws in socks:
            ws.close()
    poll_until(lambda: in_flight(s) == [0, 0], what="all workers free")


def test_idle_websocket_is_closed_with_1001(make_server, apps_dir):
    s = make_server({"websocket_idle_timeout": 1,
                     "apps": [app_config("ws", copy_app("starlette_app", apps_dir))]})
    with ws_connect(s, ping_interval=None) as ws:
        ws.send("a")
        assert ws.recv(timeout=10) == "echo: a"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        assert ws.close_code == 1001
    poll_until(lambda: in_flight(s) == [0], what="the worker to be given back")
    assert_served_after(s, "ws", workers=1)


@pytest.mark.parametrize("when", ["open", "mid-frame"])
def test_a_websocket_client_that_drops_gives_its_worker_back(make_server, apps_dir, when):
    """The client's connection is reset (no close frame), with a whole frame sent or half of one:
    a concurrency-1 single worker serves the next request at once."""
    s = make_server({"apps": [app_config("ws", copy_app("starlette_app", apps_dir), concurrency=1,
                                         min_processes=1, max_processes=1)]})
    c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    c.sendall(b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
              + _masked_text(b"hi"))
    out = b""
    while b"echo: hi" not in out:
        chunk = c.recv(65536)
        assert chunk, out
        out += chunk
    if when == "mid-frame":
        c.sendall(_masked_text(b"x" * 100)[:20])
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    c.close()
    assert_served_after(s, "ws", workers=1)


def test_graceful_stop_lets_requests_finish_then_closes_websockets_with_1001(make_server, apps_dir):
    s = make_server({"apps": [app_config("ws", copy_app("starlette_app", apps_dir))]})
    ws = ws_connect(s).__enter__()
    try:
        ws.send("before")
        assert ws.recv(timeout=10) == "echo: before"
        result = {}
        slow = threading.Thread(target=lambda: result.update(r=s.get("/slow?t=4")))
        slow.start()
        poll_until(lambda: in_flight(s) == [2], what="the slow request to reach the worker")
        s.proc.send_signal(signal.SIGTERM)
        # while a request drains, the WebSocket still works
        ws.send("during")
        assert ws.recv(timeout=10) == "echo: during"
        slow.join(30)
        assert result["r"][0] == 200 and result["r"][2] == b"slept\n"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)
        assert ws.close_code == 1001
    finally:
        ws.close()
    assert s.proc.wait(40) == 0  # the fixture then checks that no process is left


def test_a_restart_closes_websockets_on_the_old_worker_after_shutdown_timeout(make_server, apps_dir):
    """Otherwise a rolling restart never ends: the old worker would stay for as long as any
    client keeps its WebSocket open."""
    s = make_server({"shutdown_timeout": 1, "apps": [app_config("ws", copy_app("starlette_app", apps_dir))]})
    old_pid = s.app_status("ws")["workers"][0]["pid"]
    with ws_connect(s) as ws:
        ws.send("a")
        assert ws.recv(timeout=10) == "echo: a"
        assert s.cli("restart", "ws").returncode == 0
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        assert ws.close_code == 1001
    poll_until(lambda: old_pid not in [w["pid"] for w in s.app_status("ws")["workers"]],
               what="the old worker to stop")
    with ws_connect(s) as ws:  # clients reconnect to the new worker
        ws.send("b")
        assert ws.recv(timeout=10) == "echo: b"


def test_websocket_flow_control_bounds_the_proxys_memory(make_server, apps_dir):
    """A client that sends much and reads nothing: the proxy stops reading instead of buffering."""
    s = make_server({"apps": [app_config("ws", copy_app("starlette_app", apps_dir))]})
    front = psutil.Process(s.proc.pid)
    msg = "m" * (1024 * 1024)
    total = 96
    with ws_connect(s, max_queue=1, ping_interval=None) as ws:
        ws.send("warm up")
        assert ws.recv(timeout=10) == "echo: warm up"
        base = front.memory_info().rss
        sent = [0]

        def sender():
            for _ in range(total):
                ws.send(msg)
                sent[0] += 1

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        peak = base
        last, still = -1, 0
        deadline = time.monotonic() + 60
        while t.is_alive() and still < 10 and time.monotonic() < deadline:  # until the sender stalls
            peak = max(peak, front.memory_info().rss)
            still = still + 1 if sent[0] == last else 0
            last = sent[0]
            time.sleep(0.1)
        peak = max(peak, front.memory_info().rss)
        assert peak - base < 24 * 1024 * 1024, f"the proxy grew by {(peak - base) >> 20} MiB"
        for _ in range(total):  # now read everything: all of it arrives, in order
            assert ws.recv(timeout=30) == "echo: " + msg
        t.join(30)
        assert sent[0] == total


# ---------------------------------------------------------------------------- the end of a WebSocket (issue 11)


def ws_close_worker(apps_dir, **kw) -> dict:
    import sys

    return app_config("ws", copy_app("ws_close_worker", apps_dir), type="command",
                      command=[sys.executable, "worker.py", "$PASSENGER_LITE_SOCKET"], **kw)


def _read_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole unmasked frame in data."""
    out, i = [], 0
    while i + 2 <= len(data):
        op, ln = data[i] & 0x0F, data[i + 1] & 0x7F
        j = i + 2
        if ln == 126:
            ln, j = int.from_bytes(data[j:j + 2], "big"), j + 2
        elif ln == 127:
            ln, j = int.from_bytes(data[j:j + 8], "big"), j + 8
        if j + ln > len(data):
            break
        out.append((op, data[j:j + ln]))
        i = j + ln
    return out


def _masked_binary(n: int) -> bytes:
    mask = b"\x00\x00\x00\x00"  # a zero mask: the payload goes as it is
    return bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big") + mask + b"\x00" * n


def test_the_workers_last_message_and_close_frame_reach_a_client_that_is_still_sending(make_server, apps_dir):
    """The worker sends 8 MiB and a close frame (4000) and closes at once, while the client,
    not reading yet, is still sending: the proxy's writes toward the worker fail (EPIPE) with the
    end of the message and the close frame still unread on its side. Both must reach the client."""
    s = make_server({"apps": [ws_close_worker(apps_dir, min_processes=1, max_processes=1)]})
    n = 8 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"GET /ws?bytes=%d HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % n)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.recv(1)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 ")
        c.sendall(_masked_text(b"go"))
        # keep sending, reading nothing, until the proxy stops taking bytes (the worker reads no more)
        c.settimeout(0.5)
        frame = _masked_binary(65536)
        try:
            for _ in range(400):
                c.sendall(frame)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
        time.sleep(0.5)
        # now read it all, slowly enough that the proxy reads the worker at our pace
        c.settimeout(20)
        got = b""
        while True:
            try:
                chunk = c.recv(262144)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
            time.sleep(0.002)
    frames = _read_frames(got)
    ops = [op for op, _ in frames]
    assert ops == [0x2, 0x8], (ops, len(got))
    assert len(frames[0][1]) == n
    assert frames[1][1][:2] == (4000).to_bytes(2, "big") and frames[1][1][2:] == b"bye"
    assert_served_after(s, "ws", workers=1)
