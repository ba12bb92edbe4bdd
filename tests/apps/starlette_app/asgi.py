"""A small Starlette app for the tests."""
import asyncio
import hashlib
import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute


async def index(request):
    return PlainTextResponse("hello from starlette\n")


async def env(request):
    return JSONResponse({"root_path": request.scope.get("root_path"), "path": request.scope.get("path"),
                         "url": str(request.url), "client": request.client.host if request.client else None,
                         "scheme": request.url.scheme, "pid": os.getpid(),
                         "headers": dict(request.headers)})


async def echo(request):
    h = hashlib.sha256()
    n = 0
    async for chunk in request.stream():
        h.update(chunk)
        n += len(chunk)
    return JSONResponse({"length": n, "sha256": h.hexdigest()})


async def slow(request):
    await asyncio.sleep(float(request.query_params.get("t", "1")))
    return PlainTextResponse("slept\n")


async def stream(request):
    async def gen():
        for i in range(int(request.query_params.get("n", "3"))):
            yield f"part {i}\n".encode()
            await asyncio.sleep(0.05)
    return StreamingResponse(gen(), media_type="text/plain")


async def ws_echo(websocket):
    await websocket.accept()
    try:
        while True:
            msg = await websocket.receive_text()
            if msg == "close":
                await websocket.close(code=4001)
                return
            await websocket.send_text("echo: " + msg)
    except Exception:
        pass


app = Starlette(routes=[Route("/", index), Route("/env", env), Route("/echo", echo, methods=["POST"]),
                        Route("/slow", slow), Route("/stream", stream), WebSocketRoute("/ws", ws_echo)])
