"""Find spawners through the entry-point group `passenger_lite.spawners`, check them, detect apps.

Built-in spawners are registered in passenger-lite's own pyproject.toml, so they are found
exactly as third-party ones are. A plugin that fails to load or lacks part of the interface is
reported with its name and left out; it never takes the others down.
"""
from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path

from passenger_lite.manager.config import AppConfig

from .base import Detection, Spawner

GROUP = "passenger_lite.spawners"
log = logging.getLogger("passenger_lite.spawners")

_REQUIRED = ("type", "default_concurrency", "uses_port", "detect", "resolve", "worker_spec")


class PluginError(Exception):
    pass


class Registry:
    def __init__(self, spawners: dict[str, Spawner] | None = None):
        self.problems: list[str] = []
        self._spawners: dict[str, Spawner] = {}
        if spawners is None:
            self._load_entry_points()
        else:
            for name, sp in spawners.items():
                self.add(name, sp)

    def _load_entry_points(self) -> None:
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            try:
                obj = ep.load()
                # a class or a factory function is called; an instance is used as it is
                is_factory = isinstance(obj, type) or (callable(obj) and not hasattr(obj, "worker_spec"))
                sp = obj() if is_factory else obj
                self.add(ep.name, sp)
            except Exception as e:  # a broken plugin is reported, the rest keep working
                msg = f"spawner plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}"
                self.problems.append(msg)
                log.warning(msg)

    def add(self, name: str, sp: Spawner) -> None:
        missing = [a for a in _REQUIRED if not hasattr(sp, a)]
        if missing:
            raise PluginError(f"spawner {name!r} ({type(sp).__name__}) lacks {', '.join(missing)}")
        if sp.type != name:
            raise PluginError(f"spawner registered as {name!r} says its type is {sp.type!r}")
        if name in self._spawners:
            raise PluginError(f"two spawners claim the type {name!r}")
        self._spawners[name] = sp

    def get(self, name: str) -> Spawner:
        return self._spawners[name]

    def types(self) -> list[str]:
        return list(self._spawners)

    # -------------------------------------------------- config.Registry protocol

    def detect(self, root: Path) -> tuple[str | None, list[str], str]:
        found: list[tuple[str, Detection]] = []
        for name, sp in self._spawners.items():
            try:
                d = sp.detect(root)
            except Exception as e:  # noqa: BLE001 - a plugin bug must not hide the real answer
                log.warning("spawner %s: detect(%s) failed: %s", name, root, e)
                continue
            if d is not None and d.files:
                found.append((name, d))
        strong = [(n, d) for n, d in found if d.strong]
        pick = strong or found
        if len(pick) == 1:
            return pick[0][0], pick[0][1].files, ""
        if not pick:
            try:
                listing = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
            except OSError:
                listing = []
            shown = ", ".join(listing[:12]) + (", ..." if len(listing) > 12 else "") if listing else "nothing"
            return None, [], (f"cannot tell what kind of app is in {root} (found: {shown}); "
                              f"set `type:` to one of {', '.join(sorted(self._spawners))}")
        claims = "; ".join(f"{', '.join(d.files)} -> {n}" for n, d in pick)
        return None, [f for _, d in pick for f in d.files], (
            f"ambiguous app in {root}: {claims}; set `type:` to say which")

    def resolve(self, app: AppConfig, root: Path) -> list[tuple[str, str]]:
        sp = self._spawners[app.type]
        problems = sp.resolve(app, root)
        if app.concurrency is None:
            app.concurrency = sp.default_concurrency
        return problems


_default: Registry | None = None


def default_registry() -> Registry:
    global _default
    if _default is None:
        _default = Registry()
    return _default
