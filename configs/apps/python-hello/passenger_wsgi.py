"""The example's Python app: a plain WSGI callable, no dependencies."""
import os
import platform

PAGE = """<!DOCTYPE html>
<title>passenger-lite: Python</title>
<h1>Hello from Python {version}</h1>
<p>Worker pid {pid}, mounted at <code>{script_name}</code>, path <code>{path}</code>.</p>
"""


def application(environ, start_response):
    body = PAGE.format(version=platform.python_version(), pid=os.getpid(),
                       script_name=environ.get("SCRIPT_NAME") or "/", path=environ.get("PATH_INFO", "")).encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
