"""Optional parts of a running manager (access log, metrics, file watcher), each with start/stop."""
from __future__ import annotations


def build_extras(runtime) -> list:
    return []
