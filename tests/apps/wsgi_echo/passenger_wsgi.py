"""A plain WSGI app for the tests: echoes what it was given, sleeps, streams, crashes on demand."""
import hashlib
import json
import os
import time
from urllib.parse import parse_qs


_HOG = []


def _q(environ, name, default=None):
    return parse_qs(environ.get("QUERY_STRING", "")).get(name, [default])[0]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/env":
        keys = ["SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "SERVER_NAME", "SERVER_PORT",
                "REMOTE_ADDR", "CONTENT_TYPE", "CONTENT_LENGTH", "wsgi.url_scheme", "SERVER_PROTOCOL"]
        data = {k: environ.get(k) for k in keys}
        data["headers"] = {k[5:]: v for k, v in environ.items() if k.startswith("HTTP_")}
        data["env"] = {k: v for k, v in os.environ.items() if k.startswith(("PASSENGER", "WSGI_ENV", "TEST_"))}
        data["pid"] = os.getpid()
        body = json.dumps(data).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/echo":
        h = hashlib.sha256()
        n = 0
        inp = environ["wsgi.input"]
        while True:
            chunk = inp.read(65536)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        body = json.dumps({"length": n, "sha256": h.hexdigest()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/slow":
        time.sleep(float(_q(environ, "t", "1")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept\n"]
    if path == "/pid":
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/big":
        n = int(_q(environ, "n", "1048576"))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])

        def gen():
            left = n
            block = b"x" * 65536
            while left > 0:
                yield block[:min(left, 65536)]
                left -= 65536
        return gen()
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            for i in range(int(_q(environ, "n", "3"))):
                yield b"part %d\n" % i
                time.sleep(float(_q(environ, "t", "0.05")))
        return gen()
    if path == "/hog":  # keeps the memory: for memory_limit
        _HOG.append(bytearray(int(_q(environ, "mb", "64")) * 1024 * 1024))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"hog\n"]
    if path == "/crash":
        os._exit(1)
    if path == "/crash-mid":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "1000000")])

        def gen():
            yield b"x" * 1000
            time.sleep(0.2)
            os._exit(1)
        return gen()
    if path == "/status":
        code = int(_q(environ, "code", "200"))
        start_response(f"{code} Whatever", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    body = b"hello from wsgi\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
