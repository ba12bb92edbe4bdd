"""Command spawner (`command`): any program that serves HTTP/1.1 (Go, PHP, Elixir, ...).

`command:` is a list (run as is) or a string (run by /bin/sh -c), cwd = root. The program
learns where to listen from its environment:

  * $PORT: a free port on 127.0.0.1 (the default), or
  * $PASSENGER_LITE_SOCKET: a Unix socket path, when the command mentions PASSENGER_LITE_SOCKET
    (a program that reads the variable itself: `PASSENGER_LITE_SOCKET=$PASSENGER_LITE_SOCKET ./server`).

In a list, `$PORT`, `${PORT}`, `$PASSENGER_LITE_SOCKET` and `${PASSENGER_LITE_SOCKET}` are
replaced by their values (there is no shell to do it). The worker is ready when its address answers
the app's `ready_check` (default `OPTIONS *`; `GET /health` or `connect` for servers that mind),
and is stopped with SIGTERM to its process group.

Default concurrency 0 (unlimited): the servers people run this way (Node/Next.js, Go, Deno,
Elixir, uvicorn, PHP's and Java's) take many requests at once in one process; concurrency 1
would scale a Next.js app to one 200 MiB process per in-flight request. Set `concurrency: 1` for
a server that truly handles one request at a time.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from passenger_lite.manager.config import AppConfig

from .base import Detection, WorkerContext, WorkerSpec, common_env, find_program

SOCKET_VAR = "PASSENGER_LITE_SOCKET"
_VAR_RE = re.compile(r"\$(?:\{(PORT|PASSENGER_LITE_SOCKET)\}|(PORT|PASSENGER_LITE_SOCKET)\b)")


def _text(command: list[str] | str | None) -> str:
    return " ".join(command) if isinstance(command, list) else (command or "")


class CommandSpawner:
    type = "command"
    default_concurrency = 0
    uses_port = True  # per app: see wants_port

    def wants_port(self, app: AppConfig) -> bool:
        """A TCP port, unless the command asks for the Unix socket."""
        return SOCKET_VAR not in _text(app.command)

    def detect(self, root: Path) -> Detection | None:
        return None  # a command is never guessed from files

    def resolve(self, app: AppConfig, root: Path) -> list[tuple[str, str]]:
        cmd = app.command
        if cmd is None or (isinstance(cmd, str) and not cmd.strip()) or (isinstance(cmd, list) and not cmd):
            return [("command", "type command needs `command:`, a list [program, args...] or a shell string; "
                                "it gets $PORT (or $PASSENGER_LITE_SOCKET when it mentions it)")]
        if isinstance(cmd, list):
            prog = cmd[0]
            if os.sep in prog:
                path = prog if os.path.isabs(prog) else str(root / prog)
                if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                    return [("command", f"{path} is not an executable file")]
            elif find_program(prog) is None:
                return [("command", f"program {prog!r} not found on PATH")]
        return []

    def worker_spec(self, ctx: WorkerContext) -> WorkerSpec:
        env = common_env(ctx)
        if ctx.port is not None:
            env.pop(SOCKET_VAR, None)  # one address only: a program that prefers the socket must not see it
        values = {"PORT": env.get("PORT", ""), SOCKET_VAR: env.get(SOCKET_VAR, "")}
        cmd = ctx.app.command
        if isinstance(cmd, list):
            argv = [_VAR_RE.sub(lambda m: values[m.group(1) or m.group(2)], a) for a in cmd]
        else:
            argv = ["/bin/sh", "-c", cmd or ""]
        return WorkerSpec(argv=argv, env=env, cwd=ctx.app.root)
