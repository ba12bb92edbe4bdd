#!/usr/bin/env python3
# Vendored verbatim (apart from these two lines) from /work/shared/anchors/aioproxy.py: the "straightforward aiohttp proxy"
# of issue 8, the reference the proxy hop is measured against. Do not tune it: it is the baseline.
"""Minimal aiohttp reverse proxy prototype: the ceiling estimate for passenger-lite's front proxy.

One aiohttp.web server, one ClientSession with a keep-alive pool (UnixConnector or TCPConnector)
to one upstream, request body and response body streamed (StreamResponse), hop-by-hop headers dropped.
  aioproxy.py --port 18051 --upstream unix:/tmp/anchors-work/sock/uvicorn.sock [--no-uvloop] [--reuse-port]
"""
import argparse
import asyncio

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
       "te", "trailer", "transfer-encoding", "upgrade"}


async def proxy(request: web.Request) -> web.StreamResponse:
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP and k.lower() != "host"]
    headers.append(("Host", request.host))
    headers.append(("X-Forwarded-For", request.remote or ""))
    body = request.content if request.body_exists else None
    try:
        return await _forward(request, headers, body)
    except (ConnectionError, aiohttp.ClientError):
        # upstream failed -> 502; if it was the client that went away, aiohttp drops this quietly
        raise web.HTTPBadGateway() from None


async def _forward(request: web.Request, headers: list, body) -> web.StreamResponse:
    async with request.app["session"].request(
            request.method, request.app["base"] + request.path_qs, headers=headers, data=body,
            allow_redirects=False, auto_decompress=False) as up:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for k, v in up.headers.items():
            if k.lower() not in HOP:
                resp.headers.add(k, v)
        if up.content_length is not None:
            resp.content_length = up.content_length  # keep Content-Length, no chunking
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="unix:/path.sock or host:port")
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--reuse-port", action="store_true")
    ap.add_argument("--pool", type=int, default=64, help="max upstream connections")
    a = ap.parse_args()

    if not a.no_uvloop:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def session_ctx(app: web.Application):
        print(f"aioproxy on :{a.port}, loop {type(asyncio.get_running_loop()).__module__}", flush=True)
        if a.upstream.startswith("unix:"):
            conn = aiohttp.UnixConnector(path=a.upstream[5:], limit=a.pool, keepalive_timeout=60)
            app["base"] = "http://upstream"
        else:
            conn = aiohttp.TCPConnector(limit=a.pool, keepalive_timeout=60)
            app["base"] = "http://" + a.upstream
        app["session"] = aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"), cookie_jar=aiohttp.DummyCookieJar())
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    web.run_app(app, host=a.host, port=a.port, access_log=None, reuse_port=a.reuse_port or None,
                print=None, backlog=1024)


if __name__ == "__main__":
    main()
