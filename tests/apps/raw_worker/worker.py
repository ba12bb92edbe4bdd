"""A fake worker that speaks raw HTTP/1.1, to test how the proxy takes a misbehaving app.

Run by the `command` app type as `python worker.py $PASSENGER_LITE_SOCKET` (or without the
argument, on 127.0.0.1:$PORT). Standard library only; one thread per connection. Each request path
picks a canned answer, most of them broken on purpose (see ANSWERS). Useful well-behaved paths:

    /ok       200 "ok"
    /conn     200, body = the number of the connection it came on (1, 2, ...)
    /head     200, body = the request head exactly as the proxy sent it
    /report   200, JSON: connections that got a 101, and bytes received on them afterwards
"""
import json
import os
import socket
import sys
import threading
import time

LOCK = threading.Lock()
STATE = {"connections": 0, "upgraded": [], "after_upgrade": 0}

ANSWERS = {
    # both Content-Length and Transfer-Encoding: a smuggling vector, must be 502
    "/cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # two different Content-Lengths
    "/two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    # two equal Content-Lengths (still two: 502)
    "/two-cl-same": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    # a transfer coding other than chunked
    "/te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    "/te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    # interim responses before the final one: never the final answer
    "/early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal",
    "/two-interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.js>\r\n\r\n"
                    b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
    # not HTTP at all
    "/garbage": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    # an app error is passed on as the app's (not rewritten)
    "/app-500": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
    # a Date of its own (the proxy sets the one Date the client sees)
    "/old-date": b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
    # an app that asks for proxy credentials itself
    "/proxy-auth": b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"app\"\r\n"
                   b"Content-Length: 0\r\n\r\n",
}


def big_head(n):
    """A 200 whose header fields (X-Big-0, X-Big-1, ... as sent, CRLFs included) are n bytes."""
    lines = []
    left = n
    while left > 0:
        name = b"X-Big-%d: " % len(lines)
        size = min(1000, left)
        lines.append(name + b"a" * max(size - len(name) - 2, 1) + b"\r\n")
        left -= len(lines[-1])
    return b"HTTP/1.1 200 OK\r\n" + b"".join(lines) + b"Content-Length: 2\r\n\r\nok"


def read_head(conn, buf):
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, buf
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def body_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def reply(conn, status, body, ctype=b"text/plain"):
    conn.sendall(b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                 % (status, ctype, len(body), body))


def serve(conn, number):
    buf = b""
    while True:
        head, buf = read_head(conn, buf)
        if head is None:
            return
        need = body_length(head)
        while len(buf) < need:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        buf = buf[need:]
        method, target = head.split(b" ")[:2]
        path = target.split(b"?")[0].decode()
        if method == b"OPTIONS" or path == "/ok":
            reply(conn, 200, b"ok")
        elif path == "/conn":
            reply(conn, 200, b"%d" % number)
        elif path == "/head":
            reply(conn, 200, head + b"\r\n\r\n")
        elif path == "/report":
            with LOCK:
                body = json.dumps(STATE).encode()
            reply(conn, 200, body, b"application/json")
        elif path in ANSWERS:
            conn.sendall(ANSWERS[path])
        elif path == "/upgrade":
            # a 101 whatever the request asked for; then count what still arrives on this connection
            with LOCK:
                STATE["upgraded"].append(number)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                with LOCK:
                    STATE["after_upgrade"] += len(data)
        elif path == "/big-head":  # ?n=BYTES of header fields
            conn.sendall(big_head(int(target.partition(b"?")[2].partition(b"=")[2] or 65536)))
        elif path == "/endless-head":  # header fields until the proxy hangs up
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            i = 0
            while True:
                conn.sendall(b"X-Endless-%d: %s\r\n" % (i, b"a" * 1000))
                i += 1
        elif path == "/close":
            return  # no answer at all
        elif path == "/hang":
            time.sleep(3600)
        elif path == "/half":
            # the head promises 100 bytes, 10 come, then the worker closes
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            return
        else:
            reply(conn, 404, b"no such canned answer")


def handle(conn, number):
    try:
        serve(conn, number)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    """Listen on the Unix socket named as argument, else $PORT, else $PASSENGER_LITE_SOCKET."""
    port = os.environ.get("PORT") if len(sys.argv) < 2 else None
    if port:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", int(port)))
    else:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(sys.argv[1] if len(sys.argv) > 1 else os.environ["PASSENGER_LITE_SOCKET"])
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        with LOCK:
            STATE["connections"] += 1
            number = STATE["connections"]
        threading.Thread(target=handle, args=(conn, number), daemon=True).start()


if __name__ == "__main__":
    main()
