"""A WSGI app for the buffering tests (issue 11 item 3).

/big?n=N&type=T&xab=no   N bytes (Content-Length) of type T (default application/octet-stream),
                         with `X-Accel-Buffering: no` when xab=no
/echo                    {"length", "sha256"} of the request body
/pid                     the worker's pid
anything else            200 "hello"
"""
import hashlib
import json
import os
from urllib.parse import parse_qs


def application(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ.get("PATH_INFO", "")
    if path == "/big":
        n = int(q.get("n", "1048576"))
        headers = [("Content-Type", q.get("type", "application/octet-stream")), ("Content-Length", str(n))]
        if q.get("xab"):
            headers.append(("X-Accel-Buffering", q["xab"]))
        start_response("200 OK", headers)

        def gen():
            left = n
            block = b"x" * 65536
            while left > 0:
                yield block[:min(left, 65536)]
                left -= 65536
        return gen()
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
    body = str(os.getpid()).encode() if path == "/pid" else b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
