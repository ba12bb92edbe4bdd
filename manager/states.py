"""States of workers and app pools, and the transitions allowed between them. A leaf module.

Each state has one writer that checks its table: `Worker.set_state` (its pool hears of every
transition) and `AppPool._set_state`; both log each transition once at INFO, in one format
(`blog: running -> backoff (exit status 1; next try in 1.2 s)`, `blog#2: ready -> draining (...)`).
The flags beside these states (restarting, spawning, recycling, ...) are tasks under way or
counters, not states: CONTRIBUTING.md says why, one by one. Vocabulary (CONTRIBUTING.md has the glossary): PoolSet = Passenger's Pool,
AppPool = Group, Worker = Process, Exchange = Session; a worker is checked out (`acquire`) for one
exchange and given back (`release`) when its response ends.
"""
from __future__ import annotations

import enum


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned, not yet answering on its socket
    READY = "ready"        # answering; takes requests (busy or not: see in_flight)
    DRAINING = "draining"  # takes no new requests; stops when its in-flight ones end
    STOPPING = "stopping"  # TERM sent to its process group; waiting for exit
    STOPPED = "stopped"    # exited after we asked it to
    FAILED = "failed"      # exited on its own, or never became ready


W = WorkerState
WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    W.STARTING: frozenset({W.READY, W.STOPPING, W.FAILED}),
    W.READY: frozenset({W.DRAINING, W.STOPPING, W.FAILED}),
    W.DRAINING: frozenset({W.STOPPING, W.FAILED}),
    W.STOPPING: frozenset({W.STOPPED, W.FAILED}),
    W.STOPPED: frozenset(),
    W.FAILED: frozenset(),
}


class AppState(enum.Enum):
    IDLE = "idle"          # no workers (min_processes 0, or all stopped for idleness)
    STARTING = "starting"  # first worker on its way
    RUNNING = "running"    # at least one ready worker
    BACKOFF = "backoff"    # workers keep failing to start; waiting before the next try
    FAILED = "failed"      # gave up for now; answers 503 with its error page, retried later
    STOPPING = "stopping"  # draining for shutdown or removal
    STOPPED = "stopped"


A = AppState
APP_TRANSITIONS: dict[AppState, frozenset[AppState]] = {
    A.IDLE: frozenset({A.STARTING, A.RUNNING, A.BACKOFF, A.FAILED, A.STOPPING}),
    A.STARTING: frozenset({A.RUNNING, A.BACKOFF, A.FAILED, A.IDLE, A.STOPPING}),
    A.RUNNING: frozenset({A.IDLE, A.BACKOFF, A.FAILED, A.STOPPING}),
    A.BACKOFF: frozenset({A.STARTING, A.RUNNING, A.FAILED, A.IDLE, A.STOPPING}),
    A.FAILED: frozenset({A.STARTING, A.RUNNING, A.BACKOFF, A.STOPPING}),
    A.STOPPING: frozenset({A.STOPPED}),
    A.STOPPED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


def check_transition(what: str, table: dict, old, new) -> None:
    if new not in table[old]:
        raise InvalidTransition(f"{what}: {old.value} -> {new.value} is not allowed")
