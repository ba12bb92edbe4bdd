"""The seam between the proxy and the manager: what the proxy needs from a pool and a backend.

A leaf: it imports nothing of the project. The manager's `AppPool` and `Worker` satisfy these
Protocols structurally (nothing here is inherited); the proxy types against them and never sees a
`Worker` or a `WorkerState`. Vocabulary (Passenger's in brackets): a pool (Group) checks out a
backend (Process) to a waiter (Session: forward.Exchange) and takes it back on `release`.
"""
from __future__ import annotations

from typing import Protocol


class Unavailable(Exception):
    """No worker can take this request: 503 (queue full, app failed) or 504 (waited too long)."""

    def __init__(self, status: int, message: str, problem=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.problem = problem


class Backend(Protocol):
    """One worker process as the proxy sees it."""

    id: int               # unique within its pool; keys the proxy's idle connections
    concurrency: int      # requests it takes at once (0: unlimited)
    label: str            # for log lines ("blog#3 (pid 1234)")

    @property
    def address(self) -> str | tuple[str, int]:
        """A Unix socket path, or (host, port) for a worker on a loopback port."""

    @property
    def accepting(self) -> bool:
        """It takes new requests (READY); False once it drains, stops or failed."""


class Waiter(Protocol):
    """A request waiting for a backend: what the pool calls back."""

    finished: bool
    queue_deadline: float

    def on_worker(self, backend: Backend) -> None: ...

    def on_unavailable(self, status: int, message: str, problem=None) -> None: ...


class AppSettings(Protocol):
    response_buffering: bool
    request_buffering: bool


class Checkout(Protocol):
    """One app's pool: checkout and return of backends, and the settings the proxy reads."""

    name: str
    app: AppSettings
    response_timeout: float
    shutdown_timeout: float
    error_page: str | None
    redirect_https: bool

    def acquire(self, waiter: Waiter) -> Backend | None:
        """A backend now, or None (queued: `waiter.on_worker` / `on_unavailable` later).
        Raises Unavailable for an immediate 503."""

    def release(self, backend: Backend, failed: bool = False, reason: str = "") -> None: ...

    def cancel(self, waiter: Waiter) -> None: ...
