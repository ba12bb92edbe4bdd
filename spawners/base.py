"""The spawner plugin interface.

A spawner turns one app's config into the command, environment and working directory of one
worker process; it says how to recognise its kind of app in a folder, and fills in defaults.
That is all: the manager starts, probes, supervises and stops the process.

A worker must serve HTTP/1.1 on the address it is given (`WorkerContext.socket`, a Unix socket
path, or `WorkerContext.port` on 127.0.0.1 when the spawner sets `uses_port`). It is ready when
that address answers an HTTP request (`OPTIONS * HTTP/1.1`, any status counts; or what the app's
`ready_check` names). It is asked to
stop with SIGTERM to its process group, and killed with SIGKILL after the shutdown timeout.
The proxy forwards the full request path; a worker of an app mounted at a sub-path is told the
prefix (PASSENGER_LITE_MOUNT, `WorkerContext.mount`) and moves it into SCRIPT_NAME itself.

Besides the members of `Spawner` below, a spawner may define `wants_port(app) -> bool` to choose
the socket or a port per app (the command spawner does); without it, `uses_port` decides.
Code that runs inside the app's runtime (the built-ins' is in spawners/loaders/, `loader_path`;
a plugin ships its own) never imports passenger_lite: the app's interpreter may be another
Python, or Ruby, or Node.js. Helpers a spawner may use: `common_env` (the environment every
worker gets), `find_program` / `resolve_program` (the app's interpreter), `Detection`.
tests/plugins/hello_text is a complete third-party spawner in 25 lines.

Third-party spawners register a class (or a factory returning an instance) in the entry-point
group `passenger_lite.spawners`; the entry-point name is the app `type` it serves:

    [project.entry-points."passenger_lite.spawners"]
    php-builtin = "my_package.spawner:PhpSpawner"

The built-in spawners are registered exactly the same way in passenger-lite's own pyproject.toml.
This module imports nothing from passenger_lite but the config models.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from passenger_lite.manager.config import AppConfig


@dataclass
class Detection:
    """What a spawner recognised in an app's root folder."""

    files: list[str]      # the files that gave it away, e.g. ["config.ru"]
    strong: bool = True   # False for hints that other kinds of app also have (package.json)


@dataclass
class WorkerContext:
    """What the manager tells a spawner about the worker it is about to start."""

    app: AppConfig               # resolved: absolute root, type, entry, concurrency, mount path
    socket: str                  # Unix socket path the worker must bind (in a private 0700 folder)
    port: int | None             # a free loopback TCP port, when the spawner asked for one
    environment: str             # "production" or "development"
    worker_id: int               # 1, 2, ... per app, for log prefixes
    base_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def mount(self) -> str:
        """The app's path prefix, '' at the root (SCRIPT_NAME)."""
        return "" if self.app.path == "/" else self.app.path


@dataclass
class WorkerSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: str


@runtime_checkable
class Spawner(Protocol):
    #: the app `type` this spawner serves (the entry-point name)
    type: str
    #: concurrency when the app does not set one (1 = one request per process; 0 = unlimited)
    default_concurrency: int
    #: True: the worker listens on WorkerContext.port (127.0.0.1) instead of the Unix socket
    uses_port: bool

    def detect(self, root: Path) -> Detection | None:
        """Recognise this kind of app in `root`, or None."""
        ...

    def resolve(self, app: AppConfig, root: Path) -> list[tuple[str, str]]:
        """Fill in defaults on `app` (entry, interpreter). Return problems as (key, message),
        key relative to the app ("entry", "python", ...)."""
        ...

    def worker_spec(self, ctx: WorkerContext) -> WorkerSpec:
        """The command, environment and cwd of one worker."""
        ...


def common_env(ctx: WorkerContext) -> dict[str, str]:
    """The environment every worker gets, whatever its language."""
    env = dict(ctx.base_env)
    for name in ("PASSENGER_APP_ENV", "RACK_ENV", "RAILS_ENV", "NODE_ENV", "WSGI_ENV"):
        env[name] = ctx.environment
    env["PYTHONUNBUFFERED"] = "1"
    env["PASSENGER_LITE_APP"] = ctx.app.name
    env["PASSENGER_LITE_SOCKET"] = ctx.socket
    env["PASSENGER_LITE_MOUNT"] = ctx.mount
    env["PASSENGER_LITE_CONCURRENCY"] = str(ctx.app.concurrency or 0)
    if ctx.port is not None:
        env["PORT"] = str(ctx.port)
    env.update(ctx.app.env)
    return env


def find_program(configured: str | None, *names: str) -> str | None:
    """An executable: the configured path (checked), else the first of `names` on PATH."""
    if configured:
        if os.sep in configured:
            return configured if os.access(configured, os.X_OK) and os.path.isfile(configured) else None
        return shutil.which(configured)
    for n in names:
        found = shutil.which(n)
        if found:
            return found
    return None


def resolve_program(app: AppConfig, key: str, names: tuple[str, ...], missing: str) -> list[tuple[str, str]]:
    """Set `app.<key>` (python, ruby, node) to the program's absolute path: the configured one,
    else the first of `names` on PATH. A problem for `key` when there is none; `missing` says
    what to do when nothing was configured."""
    configured = getattr(app, key)
    exe = find_program(configured, *names)
    if exe is None:
        return [(key, f"{configured!r} not found or not executable" if configured else missing)]
    setattr(app, key, exe)
    return []


def loader_path(filename: str) -> str:
    """Absolute path of a file in spawners/loaders (code that runs inside the app's runtime)."""
    return str(Path(__file__).with_name("loaders") / filename)


def short_command(argv: list[str]) -> str:
    """A worker's command for a log line: our loaders' long site-packages folder shown as
    `<passenger-lite>/loaders/` (status and error pages keep the full command)."""
    folder = str(Path(__file__).with_name("loaders")) + os.sep
    return " ".join(a.replace(folder, "<passenger-lite>/loaders/") for a in argv)
