"""Waiting on a condition in the integration tests: poll until it holds, fail naming it."""
import threading
import time


def wait_until(fn, what: str, timeout: float = 20):
    """fn()'s first truthy value; an AssertionError naming `what` when it never comes."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Background:
    """Calls running in threads, e.g. requests a test keeps in flight: `.start(fn, *args)`,
    then `.results()` joins them all and returns their values in order."""

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
