"""Restart triggers from the file system: `tmp/restart.txt` (every mode) and source changes (dev mode).

- `tmp/restart.txt` in an app's root: when its mtime changes (or it appears), the app gets a
  rolling restart, as with Passenger; if the new workers fail to start the old ones keep
  serving. Checked with one stat() per app every RESTART_TXT_EVERY seconds.
- Dev mode (`start --dev`, or `watch: true` on an app): watchfiles (inotify) reports changes
  under the app's root, debounced; the app gets a rolling restart and one log line names the
  file. If the new code does not boot, the old workers are stopped so that the error page
  (with the failure's details in development) shows until the next change fixes it.
  Ignored: version-control and dependency folders (.git, node_modules, __pycache__, .venv, ...),
  tmp/ and log/ at the app's root, compiled and editor files (*.pyc, *.swp, *~), *.log and our
  own log files. The root itself is watched flat and each of its other folders recursively, so
  node_modules or a virtualenv never costs an inotify watch per folder.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path

log = logging.getLogger("passenger_lite.manager")

RESTART_TXT = ("tmp", "restart.txt")
RESTART_TXT_EVERY = 2.0
DEBOUNCE_MS = 1000      # the longest a burst of changes (a `git checkout`) is collected into one restart
STEP_MS = 100           # a burst ends after this long without a new change
IGNORE_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", ".tox", ".idea",
                         ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".bundle", ".cache"})
IGNORE_TOP = frozenset({"tmp", "log"})
IGNORE_FILES = re.compile(r"\.py[cod]$|\.sw.$|~$|^\.#|^\.DS_Store$|\.log$|^flycheck_|\.___jb_...___$")


def ignored(rel: str | Path) -> bool:
    """Is a path (relative to the app's root) one whose change must not restart the app?"""
    parts = Path(rel).parts
    if not parts:
        return True
    if parts[0] in IGNORE_TOP:
        return True
    if any(p in IGNORE_DIRS for p in parts):
        return True
    return bool(IGNORE_FILES.search(parts[-1]))


def trigger_order(rels: set[str], root: Path) -> list[str]:
    """Changed paths, the one to name first: a file that exists now (an editor's temporary file
    that was renamed over the real one does not), not hidden, then by name."""
    def key(rel: str):
        return (not (root / rel).exists(), Path(rel).name.startswith("."), rel)
    return sorted(rels, key=key)


def watched_apps(site, dev: bool) -> dict[str, str]:
    """name -> root of the apps whose source changes restart them: with --dev every app unless
    it says `watch: false`; otherwise the apps that say `watch: true`."""
    return {a.name: a.root for a in site.apps if (a.watch if a.watch is not None else dev)}


class AppWatch:
    """watchfiles on one app's root: flat on the root, recursive on each folder that is not ignored."""

    def __init__(self, name: str, root: str, on_change, skip: frozenset[str] = frozenset()):
        self.name = name
        self.root = Path(root)
        self.on_change = on_change     # fn(name, [relative paths]) -> None
        self.skip = skip               # absolute paths never to react to (our own log files)
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._ending: set[asyncio.Task] = set()

    def _keep(self, change, path: str) -> bool:
        if path in self.skip:
            return False
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:
            return False
        return not rel.startswith("..") and not ignored(rel)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        folders = []
        try:
            for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False) and not ignored(entry.name):
                    folders.append(entry.path)
        except OSError as e:
            log.warning("%s: cannot watch %s: %s", self.name, self.root, e.strerror or e)
            return
        self._tasks = [loop.create_task(self._run([str(self.root)], False))]
        if folders:
            self._tasks.append(loop.create_task(self._run(folders, True)))

    async def _run(self, paths: list[str], recursive: bool) -> None:
        from watchfiles import Change, awatch

        try:
            async for changes in awatch(*paths, watch_filter=self._keep, stop_event=self._stop, debounce=DEBOUNCE_MS,
                                        step=STEP_MS, recursive=recursive, ignore_permission_denied=True):
                rels = trigger_order({os.path.relpath(p, self.root) for _, p in changes}, self.root)
                if not recursive and any(c is Change.added and os.path.isdir(p) for c, p in changes):
                    asyncio.get_running_loop().call_soon(self.rewatch)  # a new folder: watch inside it too
                self.on_change(self.name, rels)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a watcher failure must not take the manager down
            log.warning("%s: file watching stopped: %s", self.name, e)

    def rewatch(self) -> None:
        if self._stop is None or self._stop.is_set():
            return
        self._stop.set()
        for t in self._tasks:  # they end at their next check of the stop event
            self._ending.add(t)
            t.add_done_callback(self._ending.discard)
        self.start()

    async def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        tasks, self._tasks = self._tasks + list(self._ending), []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for t in pending:
                t.cancel()


class Watcher:
    """An extra (start/stop, reconfigure after a reload): restart.txt for every app, and source
    watching for the apps dev mode covers."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.dev = runtime.dev
        self.watches: dict[str, AppWatch] = {}
        self.mtimes: dict[str, int | None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._restarts: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for app in self.runtime.site.apps:
            self.mtimes[app.name] = _mtime(app.root)
        self._timer = self._loop.call_later(RESTART_TXT_EVERY, self._check_restart_txt)
        self.reconfigure(self.runtime.site)

    def _skip(self, site) -> frozenset[str]:
        from .output import log_path

        return frozenset(str(p) for p in (log_path(site, "log_file"), log_path(site, "access_log")) if p)

    def reconfigure(self, site) -> None:
        """(Re)start source watches to match the site's apps (after a config reload)."""
        want = watched_apps(site, self.dev)
        skip = self._skip(site)
        for name in list(self.watches):
            if want.get(name) != str(self.watches[name].root):
                self._loop.create_task(self.watches.pop(name).stop())
        for name, root in want.items():
            if name not in self.watches:
                w = self.watches[name] = AppWatch(name, root, self.source_changed, skip)
                w.start()
                log.info("%s: watching %s for changes (dev mode)", name, root)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        watches, self.watches = list(self.watches.values()), {}
        await asyncio.gather(*(w.stop() for w in watches), return_exceptions=True)
        for t in list(self._restarts):
            t.cancel()
        if self._restarts:
            await asyncio.wait(list(self._restarts), timeout=5)

    # ------------------------------------------------------------------ triggers

    def source_changed(self, name: str, files: list[str]) -> None:
        if not files:
            return
        more = f" (and {len(files) - 1} more)" if len(files) > 1 else ""
        log.info("%s: %s changed%s; restarting its workers", name, files[0], more)
        self._restart(name, f"{files[0]} changed", keep_old_on_failure=False)

    def _check_restart_txt(self) -> None:
        self._timer = None
        try:
            for app in self.runtime.site.apps:
                m = _mtime(app.root)
                if app.name not in self.mtimes:       # an app added by a reload: remember, do not restart
                    self.mtimes[app.name] = m
                elif m is not None and m != self.mtimes[app.name]:
                    self.mtimes[app.name] = m
                    log.info("%s: tmp/restart.txt touched; restarting its workers", app.name)
                    self._restart(app.name, "tmp/restart.txt touched", keep_old_on_failure=True)
                else:
                    self.mtimes[app.name] = m
        finally:
            self._timer = self._loop.call_later(RESTART_TXT_EVERY, self._check_restart_txt)

    def _restart(self, name: str, reason: str, keep_old_on_failure: bool) -> None:
        ps = self.runtime.poolset
        pool = ps.pools.get(name) if ps is not None else None
        if pool is None or pool.stopping:
            return
        t = self._loop.create_task(pool.restart(reason, keep_old_on_failure=keep_old_on_failure))
        self._restarts.add(t)
        t.add_done_callback(self._restarts.discard)


def _mtime(root: str) -> int | None:
    try:
        return os.stat(os.path.join(root, *RESTART_TXT)).st_mtime_ns
    except OSError:
        return None
