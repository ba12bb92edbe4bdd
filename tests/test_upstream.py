"""The proxy's idle worker connections (proxy/upstream.py IdlePool): kept per backend, capped,
forgotten when they close, and all closed when the manager reports their backend gone (and none
kept after that)."""
from __future__ import annotations

import asyncio

from passenger_lite.proxy.upstream import MAX_IDLE, IdlePool, Upstream


class Backend:  # what proxy/checkout.py's Backend asks of a worker
    def __init__(self, wid: int, address: str):
        self.id = wid
        self.concurrency = 1
        self.label = f"app#{wid}"
        self.address = address
        self.accepting = True


async def _server(path: str):
    closed: asyncio.Queue = asyncio.Queue()

    async def handle(reader, writer):
        await reader.read()  # until the proxy's side closes
        closed.put_nowait(True)
        writer.close()

    server = await asyncio.start_unix_server(handle, path)
    return server, closed


async def _connect(loop, backend, idle) -> Upstream:
    _, conn = await loop.create_unix_connection(lambda: Upstream(backend, idle.spare(backend)), backend.address)
    return conn


async def _until(cond, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached within 5 s"
        await asyncio.sleep(0.01)


async def test_backend_gone_closes_its_idle_connections_only(tmp_path):
    loop = asyncio.get_running_loop()
    a, b = Backend(1, str(tmp_path / "a.sock")), Backend(1, str(tmp_path / "b.sock"))  # same id, two apps
    sa, closed_a = await _server(a.address)
    sb, closed_b = await _server(b.address)
    idle = IdlePool()
    conns_a = [await _connect(loop, a, idle) for _ in range(3)]
    conn_b = await _connect(loop, b, idle)
    for c in conns_a + [conn_b]:
        c.give_back()
    assert idle.conns[a] == conns_a and idle.conns[b] == [conn_b]
    idle.drop(a)
    for _ in conns_a:
        await asyncio.wait_for(closed_a.get(), 5)  # the worker's side saw each one end
    assert a not in idle.conns and idle.conns[b] == [conn_b]
    await _until(lambda: all(c.transport is None for c in conns_a))
    assert closed_b.empty() and conn_b.transport is not None
    # a connection that closes (the worker's end went away) leaves the pool by itself
    conn_b.transport.close()
    await asyncio.wait_for(closed_b.get(), 5)
    await _until(lambda: idle.conns[b] == [])
    sa.close()
    sb.close()


async def test_at_most_max_idle_per_backend(tmp_path):
    loop = asyncio.get_running_loop()
    a = Backend(1, str(tmp_path / "a.sock"))
    server, closed = await _server(a.address)
    idle = IdlePool()
    conns = [await _connect(loop, a, idle) for _ in range(MAX_IDLE + 2)]
    for c in conns:
        c.give_back()
    assert idle.conns[a] == conns[:MAX_IDLE]
    for _ in range(2):
        await asyncio.wait_for(closed.get(), 5)  # the two past the cap were closed
    idle.drop(a)
    for _ in range(MAX_IDLE):
        await asyncio.wait_for(closed.get(), 5)
    server.close()


async def test_a_connection_given_back_after_its_backend_is_gone_is_closed(tmp_path):
    """A request that was still running when its worker was stopped: its connection is not kept."""
    loop = asyncio.get_running_loop()
    a = Backend(1, str(tmp_path / "a.sock"))
    server, closed = await _server(a.address)
    idle = IdlePool()
    busy = await _connect(loop, a, idle)
    idle.drop(a)       # the manager: worker stopping
    busy.give_back()   # its response ended after that
    await asyncio.wait_for(closed.get(), 5)
    assert a not in idle.conns
    a.accepting = False
    late = await _connect(loop, a, idle)  # a connect that was under way as it stopped
    late.give_back()
    await asyncio.wait_for(closed.get(), 5)
    assert idle.conns == {}
    server.close()
