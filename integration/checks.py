"""Helpers the language tests share: request bodies that must arrive whole, and requests kept
in flight in threads."""
import hashlib
import http.client
import json
import os
import threading


def assert_bodies_arrive_whole(s, path: str, **kw) -> None:
    """POST bodies of several sizes, then a chunked one, to an app's echo route, which answers
    {"length": n, "sha256": hex} of what it read."""
    parts = [os.urandom(70_000) for _ in range(5)]
    bodies = [(os.urandom(n),) * 2 for n in (0, 10, 200_000, 3_000_000)]
    bodies.append((iter(parts), b"".join(parts)))  # a generator body goes out chunked
    for body, whole in bodies:
        status, _, answer = s.request("POST", path, body=body, **kw)
        assert status == 200, answer[:500]
        assert json.loads(answer) == {"length": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}


class Background:
    """Calls running in threads, e.g. requests a test keeps in flight: `.start(fn, *args)`,
    then `.results()` joins them all and returns their values (or exceptions) in order."""

    def __init__(self):
        self._threads: list[threading.Thread] = []
        self._values: dict[int, object] = {}

    def start(self, fn, *args) -> None:
        i = len(self._threads)

        def run():
            try:
                self._values[i] = fn(*args)
            except Exception as e:  # noqa: BLE001 - reported by results()
                self._values[i] = e

        t = threading.Thread(target=run, daemon=True)
        self._threads.append(t)
        t.start()

    def results(self, timeout: float = 30) -> list:
        for t in self._threads:
            t.join(timeout)
        return [self._values.get(i, TimeoutError("still running")) for i in range(len(self._threads))]


def get_json_from(s, source_ip: str, path: str, **headers) -> dict:
    """GET `path` from another loopback address (127.0.0.2, ...), so that the client's address
    the app reports can be told apart from the front process's own 127.0.0.1."""
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30, source_address=(source_ip, 0))
    try:
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body[:500])
        return json.loads(body)
    finally:
        c.close()
