"""A WSGI app for the operations tests (issue 6): holds requests until told, writes half-lines."""
import os
import sys
import time
from urllib.parse import parse_qs


def _q(environ, name, default=None):
    return parse_qs(environ.get("QUERY_STRING", "")).get(name, [default])[0]


def _text(start_response, body: str, status: str = "200 OK"):
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/pid":
        return _text(start_response, str(os.getpid()))
    if path == "/hold":
        # answers once the file named by ?until= exists: the test decides when, no timing involved
        until = _q(environ, "until")
        while not os.path.exists(until):
            time.sleep(0.01)
        return _text(start_response, f"released {os.getpid()}")
    if path == "/halflines":
        # each line is written in two pieces with a pause between them, on stdout and stderr
        tag = _q(environ, "tag", "x")
        for i in range(int(_q(environ, "n", "3"))):
            for stream in (sys.stdout, sys.stderr):
                stream.write(f"{tag}{i}-begin ")
                stream.flush()
                time.sleep(0.05)
                stream.write(f"{tag}{i}-end pid={os.getpid()}\n")
                stream.flush()
        return _text(start_response, str(os.getpid()))
    if path == "/status":
        code = int(_q(environ, "code", "200"))
        return _text(start_response, f"status {code}\n", f"{code} Whatever")
    return _text(start_response, "hello from ops_app\n")
