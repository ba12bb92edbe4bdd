"""A counting load generator for tests: N keep-alive connections in threads, every request and
every response accounted for (wrk reports neither the requests it sent nor those it cut off)."""
from __future__ import annotations

import http.client
import threading
import time
from collections import Counter


class Load:
    def __init__(self, port: int, path: str = "/", conns: int = 32, host: str | None = None, timeout: float = 30):
        self.port = port
        self.path = path
        self.conns = conns
        self.host = host
        self.timeout = timeout
        self.sent = 0
        self.statuses: Counter = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "Load":
        for _ in range(self.conns):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def _run(self) -> None:
        c = None
        headers = {"Host": self.host} if self.host else {}
        while not self._stop.is_set():
            if c is None:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            with self._lock:
                self.sent += 1
            try:
                c.request("GET", self.path, headers=headers)
                r = c.getresponse()
                r.read()
                with self._lock:
                    self.statuses[r.status] += 1
                if r.getheader("Connection", "").lower() == "close":
                    c.close()
                    c = None
            except (OSError, http.client.HTTPException) as e:
                with self._lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
                c.close()
                c = None
        if c is not None:
            c.close()

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.answered < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def summary(self) -> str:
        return f"sent {self.sent}, answered {self.answered} {dict(self.statuses)}, errors {len(self.errors)} " \
               f"{self.errors[:3]}"
