"""Python spawners: WSGI through our standard-library loader, ASGI through uvicorn.

Each worker runs in the app's own interpreter (`python:`; default: python3 on PATH), cwd = root.

WSGI: `loaders/wsgi_loader.py` is a small HTTP/1.1 server that needs only the standard library,
as Passenger's wsgi-loader does, so an app's virtualenv needs nothing extra. We measured the
alternatives on this machine: uvicorn + a2wsgi answers a hello-world WSGI app with a p50 of about
450 µs at one connection (the request hops to a thread pool), the loader in about 70 µs.

ASGI: `loaders/asgi_loader.py` runs uvicorn (well kept, with httptools and WebSocket support)
from the app's interpreter; when that interpreter lacks it, the worker exits with a message that
names the missing package and the command that installs it.
"""
from __future__ import annotations

import re
from pathlib import Path

from passenger_lite.manager.config import AppConfig

from .base import Detection, WorkerContext, WorkerSpec, common_env, find_program, loader_path

_CALLABLE_RE = r"^(?:async\s+)?def\s+{0}\b|^{0}\s*[:=]|^class\s+{0}\b|^from\s+\S+\s+import\s+.*\b{0}\b|^import\s+.*\bas\s+{0}\b"


def _module_file(root: Path, module: str) -> Path | None:
    rel = Path(*module.split("."))
    for cand in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _defines(path: Path, name: str) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(_CALLABLE_RE.format(re.escape(name)), text, re.M) is not None


class _PythonSpawner:
    type = ""
    default_concurrency = 1
    uses_port = False
    loader = ""
    markers: tuple[str, ...] = ()
    callables: tuple[str, ...] = ("application",)

    def detect(self, root: Path) -> Detection | None:
        files = [m for m in self.markers if (root / m).is_file()]
        return Detection(files) if files else None

    def resolve(self, app: AppConfig, root: Path) -> list[tuple[str, str]]:
        problems = []
        if not app.entry:
            module = next((m[:-3] for m in self.markers if (root / m).is_file()), None)
            if module is None:
                return [("entry", f"no entry given and none of {', '.join(self.markers)} in {root}; "
                                  "set `entry: module:callable`")]
            app.entry = module
        module, _, attr = app.entry.partition(":")
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*", module):
            return [("entry", f"{app.entry!r} is not module:callable")]
        path = _module_file(root, module)
        if path is None:
            return [("entry", f"module {module!r} not found in {root} "
                              f"(looked for {module.replace('.', '/')}.py and {module.replace('.', '/')}/__init__.py)")]
        if not attr:
            attr = next((c for c in self.callables if _defines(path, c)), self.callables[0])
        elif not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", attr):
            return [("entry", f"{app.entry!r}: {attr!r} is not a Python name")]
        app.entry = f"{module}:{attr}"
        exe = find_program(app.python, "python3", "python")
        if exe is None:
            problems.append(("python", f"interpreter {app.python!r} not found or not executable"
                             if app.python else "no python3 on PATH; set `python:`"))
        else:
            app.python = exe
        return problems

    def worker_spec(self, ctx: WorkerContext) -> WorkerSpec:
        env = common_env(ctx)
        env["PASSENGER_LITE_ENTRY"] = ctx.app.entry or ""
        return WorkerSpec(argv=[ctx.app.python or "python3", loader_path(self.loader)], env=env, cwd=ctx.app.root)


class WSGISpawner(_PythonSpawner):
    type = "python-wsgi"
    default_concurrency = 1
    loader = "wsgi_loader.py"
    markers = ("passenger_wsgi.py", "wsgi.py")
    callables = ("application", "app")


class ASGISpawner(_PythonSpawner):
    type = "python-asgi"
    default_concurrency = 0
    loader = "asgi_loader.py"
    markers = ("asgi.py",)
    callables = ("application", "app")
