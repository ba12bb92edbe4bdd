"""passenger-lite ASGI loader: runs one ASGI app with uvicorn on a Unix socket.

Runs inside the app's own interpreter and never imports passenger_lite. Environment as for
wsgi_loader.py (PASSENGER_LITE_SOCKET, PASSENGER_LITE_ENTRY, PASSENGER_LITE_MOUNT).

The front process forwards the full path; the mount prefix is given to the app as root_path
(ASGI: `path` includes `root_path`). `OPTIONS *` (the readiness probe) is answered here.
uvicorn logs at info (its startup and lifespan lines) without access lines; the app's own INFO
logs are shown unless it configured logging itself.
"""
import inspect
import os
import sys

from pl_apploading import is_factory, load_app, print_app_error, show_info_logs, takes  # our folder


def wrap(app, mount):
    async def probe_and_mount(scope, receive, send):
        kind = scope["type"]
        if kind == "http" and scope["method"] == "OPTIONS" and scope["path"] in ("*", mount + "*"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if mount and kind in ("http", "websocket"):
            scope = dict(scope)
            scope["root_path"] = mount
        await app(scope, receive, send)

    return probe_and_mount


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path.pop(0)
    sys.path.insert(0, os.getcwd())
    try:
        import uvicorn
    except ImportError:
        print(f"passenger-lite: python-asgi apps are served by uvicorn, which {sys.executable} cannot import.\n"
              f"Install it into the app's environment:  {sys.executable} -m pip install 'uvicorn[standard]'",
              file=sys.stderr)
        sys.exit(3)
    entry = os.environ["PASSENGER_LITE_ENTRY"]
    try:
        app = load_app(entry, "app")
    except BaseException:
        print_app_error()
        print(f"passenger-lite: could not load the ASGI app {entry!r} (cwd {os.getcwd()}, "
              f"python {sys.executable})", file=sys.stderr)
        sys.exit(3)
    # ASGI 3: app(scope, receive, send); ASGI 2 (a class or an instance): app(scope)
    if is_factory(app) or not (takes(app, 3) or (not inspect.isfunction(app) and takes(app, 1))):
        try:
            sig = str(inspect.signature(app))
        except (TypeError, ValueError):
            sig = "?"
        print(f"passenger-lite: {entry} is {getattr(app, '__qualname__', type(app).__name__)} taking {sig}, "
              f"not an ASGI app taking (scope, receive, send); if it builds and returns the app (an app "
              f"factory), call it: entry: \"{entry if '(' in entry else entry + '()'}\"", file=sys.stderr)
        sys.exit(3)
    show_info_logs()
    sock = os.environ["PASSENGER_LITE_SOCKET"]
    concurrency = int(os.environ.get("PASSENGER_LITE_CONCURRENCY", "0") or 0)
    config = uvicorn.Config(
        wrap(app, os.environ.get("PASSENGER_LITE_MOUNT", "")),
        uds=sock,
        lifespan="auto",
        access_log=False,
        log_level=os.environ.get("PASSENGER_LITE_LOG_LEVEL", "info"),  # startup and lifespan lines
        proxy_headers=True,
        forwarded_allow_ips="*",  # only the front process can reach this socket; it sets X-Forwarded-*
        server_header=False,
        date_header=False,  # the front process sets Date on every response (it drops a worker's own)
        timeout_keep_alive=3600,  # the front process owns keep-alive; it closes idle connections itself
        timeout_graceful_shutdown=None,
        limit_concurrency=None if concurrency == 0 else max(concurrency * 4, 16),
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(3)


if __name__ == "__main__":
    main()
