"""Python spawners: WSGI through our standard-library loader, ASGI through uvicorn.

Each worker runs in the app's own interpreter (`python:`; default: python3 on PATH), cwd = root.

Entry: `module:callable`, or an app factory called as gunicorn writes it (`flaskr:create_app()`,
literal arguments only). `check` refuses a plain function that cannot be the app (it cannot take
the app's arguments, or takes none: a factory named without `()`); the loaders check what they
load the same way (inspect.signature), for what `check` cannot see. A Django project (manage.py
+ <project>/wsgi.py) is detected and served from `<project>.wsgi:application`.

WSGI: `loaders/wsgi_loader.py` is a small HTTP/1.1 server that needs only the standard library,
as Passenger's wsgi-loader does, so an app's virtualenv needs nothing extra. We measured the
alternatives on this machine: uvicorn + a2wsgi answers a hello-world WSGI app with a p50 of about
450 µs at one connection (the request hops to a thread pool), the loader in about 70 µs.

ASGI: `loaders/asgi_loader.py` runs uvicorn (well kept, with httptools and WebSocket support)
from the app's interpreter; when that interpreter lacks it, the worker exits with a message that
names the missing package and the command that installs it.
"""
from __future__ import annotations

import ast
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


_DJANGO_SETTINGS_RE = re.compile(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([A-Za-z_]\w*)\.settings['"]""")


def django_project(root: Path) -> str | None:
    """The package of a standard Django project (manage.py + <package>/wsgi.py), or None."""
    manage = root / "manage.py"
    if not manage.is_file():
        return None
    try:
        m = _DJANGO_SETTINGS_RE.search(manage.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    candidates = [m.group(1)] if m else sorted(p.parent.name for p in root.glob("*/wsgi.py")
                                               if (p.parent / "settings.py").is_file())
    return next((c for c in candidates if (root / c / "wsgi.py").is_file()), None)


def parse_call(attr: str) -> tuple[str, bool] | str:
    """`create_app` -> ('create_app', False); `create_app()` or `create_app('x', debug=True)`
    (gunicorn's syntax: literal arguments only) -> ('create_app', True); else why not (a str)."""
    if "(" not in attr:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", attr):
            return f"{attr!r} is not a Python name"
        return attr, False
    try:
        node = ast.parse(attr.strip(), mode="eval").body
    except SyntaxError:
        return f"{attr!r} is not a name or a call such as create_app()"
    if not isinstance(node, ast.Call):
        return f"{attr!r} is not a name or a call such as create_app()"
    name, f = [], node.func
    while isinstance(f, ast.Attribute):
        name.insert(0, f.attr)
        f = f.value
    if not isinstance(f, ast.Name):
        return f"{attr!r}: only a function name can be called, as in create_app()"
    name.insert(0, f.id)
    for a in [*node.args, *(k.value for k in node.keywords)]:
        try:
            ast.literal_eval(a)
        except ValueError:
            return f"{attr!r}: the arguments must be literals (strings, numbers, True/False/None, lists...)"
    if any(k.arg is None for k in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
        return f"{attr!r}: the arguments must be literals"
    return ".".join(name), True


def _signature_problem(path: Path, module: str, attr: str, params: tuple[str, ...]) -> str | None:
    """Why `attr`, if it is a plain top-level function of the module, cannot be the app: it
    cannot take the app's arguments, or can be called without any (a factory such as Flask's
    create_app(test_config=None)); else None."""
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None  # the worker reports a syntax error itself, with its line
    fn = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == attr:
            fn = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.ClassDef, ast.Import, ast.ImportFrom)):
            names = [t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
            if getattr(node, "name", None) == attr or attr in names or any(
                    (a.asname or a.name) == attr for a in getattr(node, "names", [])):
                fn = None  # rebound later: not the function any more
    if fn is None or fn.decorator_list:
        return None
    a = fn.args
    positional = [*getattr(a, "posonlyargs", []), *a.args]
    required = len(positional) - len(a.defaults)
    n = len(params)
    # an app needs its arguments: a function that takes none (all optional) is a factory
    if 0 < required <= n and (a.vararg is not None or len(positional) >= n):
        return None
    shown = ", ".join(p.arg for p in positional) if positional else ""
    return (f"{module}:{attr} is a function taking ({shown}), not an app taking ({', '.join(params)}); "
            f"if it builds and returns the app (an app factory), call it: `entry: \"{module}:{attr}()\"`")


class _PythonSpawner:
    type = ""
    default_concurrency = 1
    uses_port = False
    loader = ""
    markers: tuple[str, ...] = ()
    callables: tuple[str, ...] = ("application",)
    factories: tuple[str, ...] = ("create_app", "make_app")  # Flask's CLI looks for these too
    params: tuple[str, ...] = ()
    django_module = ""

    def detect(self, root: Path) -> Detection | None:
        files = [m for m in self.markers if (root / m).is_file()]
        if not files and self.django_module:
            pkg = django_project(root)
            if pkg is not None:
                files = ["manage.py", f"{pkg}/{self.django_module}.py"]
        return Detection(files) if files else None

    def resolve(self, app: AppConfig, root: Path) -> list[tuple[str, str]]:
        problems = []
        if not app.entry:
            module = next((m[:-3] for m in self.markers if (root / m).is_file()), None)
            if module is None and self.django_module:
                pkg = django_project(root)
                module = f"{pkg}.{self.django_module}" if pkg else None
            if module is None:
                return [("entry", f"no entry given and none of {', '.join(self.markers)} in {root}"
                                  f"{' (nor a Django project: manage.py + <project>/wsgi.py)' if self.django_module else ''}"
                                  "; set `entry: module:callable`")]
            app.entry = module
        module, _, attr = app.entry.partition(":")
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*", module):
            return [("entry", f"{app.entry!r} is not module:callable")]
        path = _module_file(root, module)
        if path is None:
            return [("entry", f"module {module!r} not found in {root} "
                              f"(looked for {module.replace('.', '/')}.py and {module.replace('.', '/')}/__init__.py)")]
        if not attr:
            attr = next((c for c in self.callables if _defines(path, c)), None)
            if attr is None:
                factory = next((f for f in self.factories if _defines(path, f)), None)
                attr = f"{factory}()" if factory else self.callables[0]
        parsed = parse_call(attr)
        if isinstance(parsed, str):
            return [("entry", parsed)]
        name, called = parsed
        if not called and "." not in name:
            why = _signature_problem(path, module, name, self.params)
            if why:
                return [("entry", why)]
        app.entry = f"{module}:{attr.strip()}"
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
    params = ("environ", "start_response")
    django_module = "wsgi"


class ASGISpawner(_PythonSpawner):
    type = "python-asgi"
    default_concurrency = 0
    loader = "asgi_loader.py"
    markers = ("asgi.py",)
    callables = ("application", "app")
    params = ("scope", "receive", "send")
