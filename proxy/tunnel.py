"""A WebSocket connection after the worker's 101: bytes relayed both ways with backpressure.

The worker stays checked out (it counts as in flight) for the tunnel's whole life, so an open
WebSocket never makes a concurrency-1 worker look free, and concurrency-0 apps scale on it.
Frames are relayed unchanged, so close codes pass through. To close a tunnel ourselves (idle
timeout, shutdown, its worker draining for longer than shutdown_timeout) we send close frames
(1001 "going away") on both sides at a frame boundary, which `_Frames` tracks in each direction.

The end of a WebSocket is not lost (issue 11 item 11). When the worker sends its close frame (or
a last message) and closes while the client is still sending:
- our next write toward the worker fails (EPIPE) and the event loop drops that connection with
  whatever it had not read yet; so the tunnel keeps a duplicate of the worker socket's
  descriptor and, once the worker's side is lost, relays what is still readable there, with
  backpressure, until the socket ends;
- closing the client's side while its own bytes sit unread would send a TCP reset, which
  discards what the client had not read yet (the close frame); so, as nginx's lingering close,
  the client's bytes are read and dropped, the end of our output is marked with a FIN once it
  is written, and the connection is closed when the client closes it, or once everything was
  written and the client has been quiet for LINGER seconds (LINGER_MAX at most).
The worker is given back as soon as its side has ended.
"""
from __future__ import annotations

import errno
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .forward import Exchange
    from .reply import ReplyWriter
    from .upstream import Upstream


LINGER = 2.0        # seconds of quiet, once all is written, before a finished tunnel is closed
LINGER_MAX = 30.0   # most seconds a finished tunnel waits for its client to close


class _Frames:
    """Follows WebSocket frame boundaries in one direction without copying payloads."""

    __slots__ = ("need", "header")

    def __init__(self):
        self.need = 0          # payload bytes left in the current frame
        self.header = b""      # partial frame header

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.need:
                take = min(self.need, n - i)
                self.need -= take
                i += take
                continue
            h = self.header + data[i:i + 14]
            if len(h) < 2:
                self.header = h
                return
            ln = h[1] & 0x7F
            size = 2 + (2 if ln == 126 else 8 if ln == 127 else 0) + (4 if h[1] & 0x80 else 0)
            if len(h) < size:
                self.header = h
                return
            if ln == 126:
                ln = struct.unpack_from("!H", h, 2)[0]
            elif ln == 127:
                ln = struct.unpack_from("!Q", h, 2)[0]
            used = size - len(self.header)
            self.header = b""
            i += used
            self.need = ln

    @property
    def at_boundary(self) -> bool:
        return not self.need and not self.header


def close_frame(code: int, masked: bool) -> bytes:
    payload = struct.pack("!H", code)
    if not masked:
        return b"\x88" + bytes([len(payload)]) + payload
    mask = os.urandom(4)
    return b"\x88" + bytes([0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Tunnel:
    def __init__(self, proxy, front: "ReplyWriter", ex: "Exchange", upstream: "Upstream", rest: bytes):
        self.proxy = proxy
        self.front = front
        self.ex = ex
        self.up = upstream
        self.last = proxy.loop.time()
        self.closed = False
        self.closing_since = 0.0
        self.draining_since = 0.0  # when its worker was seen leaving the rotation
        self.to_up = _Frames()     # client -> worker
        self.to_front = _Frames()  # worker -> client
        self.up_fd = -1            # a dup of the worker socket: what it sent is read to the end
        self.reading_fd = False
        self.lingering_since = 0.0  # the worker's side has ended; waiting for the client to close
        try:
            sock = upstream.transport.get_extra_info("socket")
            if sock is not None:
                self.up_fd = os.dup(sock.fileno())
        except (OSError, AttributeError, ValueError):
            self.up_fd = -1
        front.tunnel = self
        upstream.tunnel = self
        proxy.tunnels.add(self)
        if front.transport is not None:
            front.transport.resume_reading()  # paused if the client sent much before the 101
        if front.ws_tail:
            self.from_front(front.ws_tail)
            front.ws_tail = b""
        if rest:
            self.from_peer(rest)

    # client -> worker
    def from_front(self, data: bytes) -> None:
        up = self.up.transport
        if up is None or self.closed:
            self.last = self.proxy.loop.time()  # lingering: read and dropped
            return
        self.last = self.proxy.loop.time()
        self.to_up.feed(data)
        up.write(data)
        if self.up.write_paused and self.front.transport is not None:
            self.front.transport.pause_reading()

    # worker -> client
    def from_peer(self, data: bytes) -> None:
        t = self.front.transport
        if t is None or self.closed:
            return
        self.last = self.proxy.loop.time()
        self.to_front.feed(data)
        t.write(data)
        if self.front.write_paused and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_from_peer(self) -> None:   # the worker's socket drained
        if self.front.transport is not None and not self.closed:
            self.front.transport.resume_reading()

    def resume_from_front(self) -> None:  # the client's socket drained
        if self.closed:
            return
        if self.up.transport is not None:
            self.up.transport.resume_reading()
        elif self.up_fd >= 0:
            self._read_rest()

    def front_lost(self) -> None:
        if self.up.transport is not None:
            self.up.transport.close()
        self._end()

    def peer_lost(self, exc=None) -> None:
        if self.closed:
            return
        if self.up_fd >= 0 and self.front.transport is not None:
            self._read_rest()  # what the worker sent before it went is still to be relayed
            return
        self._linger()

    def _read_rest(self) -> None:
        """The worker's connection is gone; relay what is left in its socket, then close."""
        fd = self.up_fd
        loop = self.proxy.loop
        t = self.front.transport
        while t is not None and not self.closed:
            if self.front.write_paused:
                self._stop_reading_fd()  # resume_from_front goes on
                return
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                if not self.reading_fd:
                    self.reading_fd = True
                    loop.add_reader(fd, self._read_rest)
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                data = b""  # ECONNRESET after the last byte: the end
            if not data:
                break
            self.to_front.feed(data)
            t.write(data)
            t = self.front.transport
        self._close_fd()
        self._linger()

    def _linger(self) -> None:
        """The worker's side has ended: give the worker back, then let the client read all we
        wrote before its connection is closed (see the module's notes)."""
        self.ex.release_worker()
        ft = self.front.transport
        if ft is None or self.closed:
            self._end()
            return
        self.lingering_since = self.last = self.proxy.loop.time()
        ft.resume_reading()
        if ft.can_write_eof():
            try:
                ft.write_eof()  # sent once the buffered bytes are written
            except (OSError, RuntimeError):
                pass

    def _stop_reading_fd(self) -> None:
        if self.reading_fd:
            self.reading_fd = False
            self.proxy.loop.remove_reader(self.up_fd)

    def _close_fd(self) -> None:
        self._stop_reading_fd()
        if self.up_fd >= 0:
            try:
                os.close(self.up_fd)
            except OSError:
                pass
            self.up_fd = -1

    def go_away(self, code: int = 1001) -> None:
        """Close both sides with a close frame, each at a frame boundary (else just close)."""
        if self.closed or self.lingering_since:  # the worker has closed: its close frame is on its way
            return
        ft, ut = self.front.transport, self.up.transport
        if ft is not None and self.to_front.at_boundary:
            ft.write(close_frame(code, masked=False))
        if ut is not None and self.to_up.at_boundary:
            ut.write(close_frame(code, masked=True))
        self.closing_since = self.proxy.loop.time()

    def sweep(self, now: float) -> None:
        if self.lingering_since:
            ft = self.front.transport
            if (ft is None or now - self.lingering_since > LINGER_MAX
                    or (not ft.get_write_buffer_size() and now - self.last > LINGER)):
                self.close()
            return
        if self.closing_since:
            if now - self.closing_since > 2.0:
                self.close()
        elif now - self.last > self.proxy.websocket_idle_timeout:
            self.go_away(1001)
        else:
            w = self.ex.worker
            if w is not None and not w.accepting:
                # its worker is being replaced (restart, recycling) and stops once this ends:
                # the WebSocket gets the app's shutdown_timeout, as a request would
                if not self.draining_since:
                    self.draining_since = now
                elif now - self.draining_since > self.ex.pool.shutdown_timeout:
                    self.go_away(1001)

    def close(self) -> None:
        for t in (self.front.transport, self.up.transport):
            if t is not None:
                t.close()
        self._end()

    def _end(self) -> None:
        self._close_fd()
        if self.closed:
            return
        self.closed = True
        self.proxy.tunnels.discard(self)
        ex = self.ex
        ex.release_worker()
        self.front.finish_tunnel(ex)
