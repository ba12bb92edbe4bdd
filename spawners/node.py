"""Node.js spawner (`node`): the app's own entry script with a listen() preload.

Each worker runs `node --require loaders/node_preload.cjs <entry>` (`node:`; default: node on
PATH), cwd = root. The preload makes the app's first listen() bind the worker's Unix socket, so
apps need no change whether they listen on process.env.PORT or a hard-coded port, CommonJS or
ES module (Passenger's own loader requires the app and fails on ES modules, its issue #2366).

Entry: `entry:`, else package.json `main`, else the script of a `"start": "node <file>"`
script, else app.js, server.js or index.js (or their .mjs / .cjs forms). Node apps default to
concurrency 0 (one worker takes any number of requests) and scale out when in-flight requests per
worker pass `scale_threshold`.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from passenger_lite.manager.config import AppConfig

from .base import Detection, WorkerContext, WorkerSpec, common_env, loader_path, resolve_program

STRONG = ("app.js", "server.js", "app.mjs", "server.mjs")
FALLBACKS = ("app.js", "server.js", "index.js", "app.mjs", "server.mjs", "index.mjs", "app.cjs", "server.cjs",
             "index.cjs")
_START_RE = re.compile(r"^\s*(?:exec\s+)?node(?:js)?\s+(.*)$")


class PackageError(Exception):
    pass


def read_package(root: Path) -> dict | None:
    """package.json as a dict, None when there is none; PackageError when it is broken."""
    p = root / "package.json"
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise PackageError(f"cannot read {p}: {e}") from None
    except ValueError as e:
        raise PackageError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PackageError(f"{p} is not a JSON object")
    return data


def _as_file(root: Path, name: str) -> str | None:
    """`name` as Node would resolve a relative main: the file, + .js, or its index.js."""
    name = name.strip()
    if not name:
        return None
    for cand in (name, name + ".js", name + ".mjs", name + ".cjs", os.path.join(name, "index.js")):
        if (root / cand).is_file():
            return os.path.normpath(cand)
    return None


def _start_script(pkg: dict) -> str | None:
    """The file of a `"start": "node [flags] <file>"` script (express-generator's ./bin/www)."""
    scripts = pkg.get("scripts")
    start = scripts.get("start") if isinstance(scripts, dict) else None
    m = _START_RE.match(start) if isinstance(start, str) else None
    if not m:
        return None
    try:
        words = shlex.split(m.group(1))
    except ValueError:
        return None
    return next((w for w in words if not w.startswith("-")), None)


def find_entry(root: Path, pkg: dict | None) -> str | None:
    """The entry script relative to root: package.json main, its start script, or a usual name."""
    if pkg is not None:
        main = pkg.get("main")
        found = _as_file(root, main) if isinstance(main, str) else None
        if found is None:
            start = _start_script(pkg)
            found = _as_file(root, start) if start else None
        if found is not None:
            return found
    return next((f for f in FALLBACKS if (root / f).is_file()), None)


class NodeSpawner:
    type = "node"
    default_concurrency = 0
    uses_port = False

    def detect(self, root: Path) -> Detection | None:
        strong = [f for f in STRONG if (root / f).is_file()]
        if strong:
            return Detection(strong)
        # package.json alone is a weak hint (Rails and Django apps have one too), and only when
        # it leads to a script
        try:
            pkg = read_package(root)
        except PackageError:
            pkg = None
        entry = find_entry(root, pkg)
        if entry is None:
            return None
        return Detection(["package.json"] if pkg is not None else [entry], strong=False)

    def resolve(self, app: AppConfig, root: Path) -> list[tuple[str, str]]:
        problems = []
        if app.entry:
            if not (root / app.entry).is_file():
                problems.append(("entry", f"script {root / app.entry} not found"))
        else:
            try:
                pkg = read_package(root)
            except PackageError as e:
                pkg = None
                problems.append(("entry", f"{e}; fix it or set `entry:`"))
            entry = find_entry(root, pkg)
            if entry is None:
                if not problems:
                    problems.append(("entry", f"no entry script in {root}: package.json has no usable `main` or "
                                              f"`start` script, and there is no {', '.join(FALLBACKS[:3])}; "
                                              "set `entry:`"))
            else:
                app.entry = entry
        return problems + resolve_program(app, "node", ("node", "nodejs"),
                                          "no node on PATH (Debian: apt-get install nodejs); set `node:`")

    def worker_spec(self, ctx: WorkerContext) -> WorkerSpec:
        app = ctx.app
        entry = str(Path(app.root) / (app.entry or "app.js"))
        argv = [app.node or "node", "--require", loader_path("node_preload.cjs"), entry]
        return WorkerSpec(argv=argv, env=common_env(ctx), cwd=app.root)
