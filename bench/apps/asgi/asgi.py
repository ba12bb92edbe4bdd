"""Hello-world ASGI app of the bench (served by passenger-lite as `asgi:app`, by uvicorn directly).

Based on /work/shared/anchors/apps/asgi/hello_asgi.py. Endpoints:
  GET  /                 14-byte "Hello, World!\n"
  GET  /1m               a 1 MiB body (Content-Length)
  GET  /download?bytes=N N bytes streamed in 1 MiB chunks (no Content-Length: chunked)
  POST /upload           reads the whole body, answers the byte count
Anything else is 404, so a file answered by the front process from public/ is told apart.
"""
HELLO = b"Hello, World!\n"
BIG = b"x" * (1024 * 1024)
TEXT = [(b"content-type", b"text/plain")]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/" or path == "/1m":
        body = BIG if path == "/1m" else HELLO
        await send({"type": "http.response.start", "status": 200,
                    "headers": TEXT + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/download":
        left = int(scope["query_string"].decode().partition("bytes=")[2] or 0)
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        while left > 0:
            chunk = BIG if left >= len(BIG) else BIG[:left]
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/upload":
        n = 0
        more = True
        while more:
            msg = await receive()
            n += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = str(n).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": TEXT + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    else:
        await send({"type": "http.response.start", "status": 404,
                    "headers": TEXT + [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"not found\n"})
