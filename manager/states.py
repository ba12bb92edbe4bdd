"""States of workers and app pools, and the transitions allowed between them. A leaf module.

Vocabulary from Passenger: a pool (Group) holds an app's worker processes; a worker is checked
out for one request (a session) and given back when the response ends.
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


class InvalidTransition(RuntimeError):
    pass


def check_transition(what: str, table: dict, old, new) -> None:
    if new not in table[old]:
        raise InvalidTransition(f"{what}: {old.value} -> {new.value} is not allowed")
