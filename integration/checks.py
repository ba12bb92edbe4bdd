"""Helpers the language tests share: request bodies that must arrive whole, and requests kept
in flight in threads."""
import hashlib
import http.client
import json
import os
import threading
import time


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


def assert_served_after(s, app: str, path: str = "/", *, host: str | None = None, workers: int | None = None,
                        within: float = 5.0) -> None:
    """What comes after a limit, timeout or abort (issue 11 item 13): the next request to the
    same app is served at once (a leaked worker slot would make it wait queue_timeout: the
    socket timeout `within` catches that), and then `status --json` shows no request in flight
    and none queued, and, when `workers` is given, that many ready workers."""
    status, _, body = s.request("GET", path, host=host, timeout=within)
    assert status == 200, (status, body[:300])
    deadline = time.monotonic() + within
    while True:
        a = s.app_status(app)
        ready = [w for w in a["workers"] if w["state"] == "ready"]
        busy = [(w["id"], w["state"], w["in_flight"]) for w in a["workers"] if w["in_flight"]]
        ok = not busy and not a["queue"] and (workers is None or len(ready) == workers)
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{app}: after the request, in flight {busy}, queued {a['queue']}, "
                                 f"{len(ready)} ready worker(s) (want {workers})")
        time.sleep(0.05)
