"""The routing table: Host and path prefix -> app. Pure data, built once per config load.

Order: exact host, then the most specific wildcard host (`*.example.org` matches any name below
example.org, not example.org itself), then apps with no hosts. Within a tier, the longest mount
prefix on a segment boundary wins (`/app` matches `/app` and `/app/x`, not `/apple`). When a
tier has apps for the host but none whose prefix matches, the next tier is tried.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Mount(Generic[T]):
    hosts: tuple[str, ...]  # normalised, lower-case; empty = any host
    prefix: str             # "/" or "/app" (no trailing slash)
    target: T


def _match(mounts: list, path: str):
    for m in mounts:  # longest prefix first
        p = m.prefix
        if p == "/" or path == p or (path.startswith(p) and path[len(p)] == "/"):
            return m
    return None


class Router(Generic[T]):
    def __init__(self, mounts: Iterable[Mount[T]]):
        self.mounts = list(mounts)
        exact: dict[str, list[Mount[T]]] = {}
        wild: dict[str, list[Mount[T]]] = {}
        anyhost: list[Mount[T]] = []
        for m in self.mounts:
            if not m.hosts:
                anyhost.append(m)
            for h in m.hosts:
                if h.startswith("*."):
                    wild.setdefault(h[1:], []).append(m)  # key ".example.org"
                else:
                    exact.setdefault(h, []).append(m)

        def order(ms: list) -> list:
            return sorted(ms, key=lambda m: len(m.prefix), reverse=True)

        self._exact = {h: order(ms) for h, ms in exact.items()}
        # most specific wildcard first: longest suffix
        self._wild = sorted(((suf, order(ms)) for suf, ms in wild.items()), key=lambda x: len(x[0]), reverse=True)
        self._any = order(anyhost)

    def route(self, host: str, path: str) -> Mount[T] | None:
        ms = self._exact.get(host)
        if ms is not None:
            m = _match(ms, path)
            if m is not None:
                return m
        for suffix, ms in self._wild:
            if host.endswith(suffix) and len(host) > len(suffix):
                m = _match(ms, path)
                if m is not None:
                    return m
        return _match(self._any, path)

    def table(self) -> list[tuple[str, str, T]]:
        """(host, prefix, target) rows in match order, for `passenger-lite check`."""
        rows = []
        for h, ms in sorted(self._exact.items()):
            rows += [(h, m.prefix, m.target) for m in ms]
        for suf, ms in self._wild:
            rows += [("*" + suf, m.prefix, m.target) for m in ms]
        rows += [("*", m.prefix, m.target) for m in self._any]
        return rows
