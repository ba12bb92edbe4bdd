"""Bytes the proxy holds for a slow side, so that a worker never waits on a client (issue 11 item 3).

A request body is read whole before a worker is taken (in memory up to REQUEST_MEMORY, past that
spooled to a temporary file); a response is read from the worker as fast as it comes and held
while the client is slow: in the client transport's own write buffer up to RESPONSE_MEMORY, then
here, in a temporary file up to RESPONSE_FILE_MAX, past which the worker is slowed down instead. Temporary files are made with
`tempfile.TemporaryFile`: mode 0600, created unlinked (O_TMPFILE) where the system allows, so
nothing is left behind even when the process is killed. They are written and read with
pwrite/pread on the event loop, as nginx does with its proxy_temp files: page-cache work.
"""
from __future__ import annotations

import os
import tempfile
from collections import deque

REQUEST_MEMORY = 256 * 1024        # request bodies up to this are held in memory, larger ones spooled
RESPONSE_MEMORY = 256 * 1024       # response bytes held in memory (the transport's buffer) before a file
RESPONSE_FILE_MAX = 1 << 30        # response bytes held on disk before the worker is slowed down
TAKE = 256 * 1024                  # bytes handed out at a time


class Spill:
    """A FIFO of bytes: the first `memory` bytes in memory, then an unlinked 0600 temporary file.
    Bytes in memory are always older than bytes in the file."""

    __slots__ = ("memory", "mem", "mem_size", "file", "rpos", "wpos")

    def __init__(self, memory: int):
        self.memory = memory
        self.mem: deque[bytes] = deque()
        self.mem_size = 0
        self.file = None
        self.rpos = 0
        self.wpos = 0

    @property
    def size(self) -> int:
        return self.mem_size + self.wpos - self.rpos

    def add(self, parts) -> None:
        n = 0
        for p in parts:
            n += len(p)
        if not n:
            return
        if self.wpos == self.rpos and self.mem_size + n <= self.memory:
            self.mem.extend(parts)
            self.mem_size += n
            return
        if self.file is None:
            self.file = tempfile.TemporaryFile(prefix="passenger-lite-")
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        fd = self.file.fileno()
        view = memoryview(data)
        while view:
            k = os.pwrite(fd, view, self.wpos)
            self.wpos += k
            view = view[k:]

    def take(self, n: int = TAKE) -> bytes:
        """The next bytes in order (at most about n), b"" when empty."""
        mem = self.mem
        if mem:
            first = mem.popleft()
            if len(first) < n and mem:
                parts = [first]
                size = len(first)
                while mem and size + len(mem[0]) <= n:
                    p = mem.popleft()
                    parts.append(p)
                    size += len(p)
                first = b"".join(parts)
            self.mem_size -= len(first)
            return first
        if self.rpos < self.wpos:
            data = os.pread(self.file.fileno(), min(n, self.wpos - self.rpos), self.rpos)
            if not data:
                raise OSError("the temporary buffer file was cut short")
            self.rpos += len(data)
            if self.rpos == self.wpos:  # drained: start the file again from its beginning
                self.rpos = self.wpos = 0
                os.ftruncate(self.file.fileno(), 0)
            return data
        return b""

    def close(self) -> None:
        self.mem.clear()
        self.mem_size = 0
        self.rpos = self.wpos = 0
        f = self.file
        if f is not None:
            self.file = None
            f.close()
