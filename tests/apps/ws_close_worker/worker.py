"""A raw WebSocket worker (app type `command`) whose end is abrupt, for issue 11 item 11.

    python worker.py $PASSENGER_LITE_SOCKET

GET /ws?bytes=N (a WebSocket handshake): after the 101 it reads one frame from the client, then
sends one binary message of N bytes (default 0: none) and a close frame (code 4000, reason
"bye"), and closes its socket at once, without reading what the client keeps sending. So the
proxy's next write toward it fails (EPIPE) while the message and the close frame may still sit
unread on the proxy's side of the socket. Any other request: 200 "ok".
"""
import base64
import hashlib
import os
import socket
import struct
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_head(conn):
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, b""
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def read_frame(conn, buf):
    """Skip one whole client frame; returns what followed it."""
    while True:
        if len(buf) >= 2:
            ln = buf[1] & 0x7F
            size = 2 + (2 if ln == 126 else 8 if ln == 127 else 0) + 4
            if len(buf) >= size:
                if ln == 126:
                    ln = struct.unpack_from("!H", buf, 2)[0]
                elif ln == 127:
                    ln = struct.unpack_from("!Q", buf, 2)[0]
                if len(buf) >= size + ln:
                    return buf[size + ln:]
        data = conn.recv(65536)
        if not data:
            return None
        buf += data


def serve(conn):
    while True:
        head, rest = read_head(conn)
        if head is None:
            return
        lines = head.split(b"\r\n")
        target = lines[0].split(b" ")[1]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"sec-websocket-key" not in headers:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            continue
        n = 0
        if b"bytes=" in target:
            n = int(target.split(b"bytes=")[1].split(b"&")[0])
        accept = base64.b64encode(hashlib.sha1(headers[b"sec-websocket-key"] + GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        if read_frame(conn, rest) is None:
            return
        out = (frame(0x2, os.urandom(n)) if n else b"") + frame(0x8, struct.pack("!H", 4000) + b"bye")
        conn.sendall(out)
        return  # closed with the client's later frames unread: the proxy's writes now fail


def handle(conn):
    try:
        serve(conn)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sys.argv[1] if len(sys.argv) > 1 else os.environ["PASSENGER_LITE_SOCKET"])
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
