"""A stand-alone HTTP server for the command spawner's tests (standard library only).

    server.py --port N          serve on 127.0.0.1:N
    server.py --socket PATH     serve on a Unix socket
"""
import hashlib
import http.server
import json
import os
import socketserver
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.endswith("/env"):
            env = {k: v for k, v in os.environ.items() if k.startswith(("PASSENGER", "PORT", "TEST_"))}
            self.send(json.dumps({"env": env, "path": self.path, "mode": MODE, "pid": os.getpid()}).encode(),
                      "application/json")
        else:
            self.send(f"hello from a command on {MODE}\n".encode())

    def do_POST(self):
        data = self.read_body()
        self.send(json.dumps({"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}).encode(),
                  "application/json")

    def do_OPTIONS(self):
        self.send(b"")


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        conn, _ = super().get_request()
        return conn, ("unix", 0)


if __name__ == "__main__":
    kind, where = sys.argv[1], sys.argv[2]
    if kind == "--port":
        MODE = "port"
        server = http.server.ThreadingHTTPServer(("127.0.0.1", int(where)), Handler)
    else:
        MODE = "socket"
        server = UnixServer(where, Handler)
    print(f"serving on {where}", flush=True)
    server.serve_forever()
