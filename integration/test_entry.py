"""Issue 12 item 4: entry points as frameworks document them. App factories (gunicorn's
`module:create_app()` syntax, literal arguments too), a factory named without the call refused at
`check` and at worker start with a clear boot error, and a standard Django project found by `check`.
Real Flask, Starlette and Django (made by `django-admin startproject`), real CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import app_config, run_cli

FLASKR = '''
from flask import Flask


def create_app(test_config=None, greeting="hello"):
    app = Flask(__name__)

    @app.route("/")
    def index():
        return f"{greeting} from flaskr ({test_config})\\n"

    return app
'''

# a plain WSGI factory, standard library only, for the other interpreters
PLAIN = '''
import sys


def create_app(greeting="hello", *, punct="!"):
    def application(environ, start_response):
        body = f"{greeting}{punct} python {sys.version_info[0]}.{sys.version_info[1]}\\n".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return application


make = create_app  # an alias: check sees no def, the loader sees the function
'''

STARLETTE = '''
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def create_app(name="asgi"):
    async def index(request):
        return PlainTextResponse(f"hello from the {name} factory\\n")
    return Starlette(routes=[Route("/", index)])
'''


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def check(tmp_path: Path, apps: list[dict]) -> subprocess.CompletedProcess:
    cfg = tmp_path / "check.yaml"
    cfg.write_text(yaml.safe_dump({"apps": apps}))
    return run_cli("check", "--config", str(cfg))


def test_flask_app_factory_with_and_without_literal_arguments(make_server, apps_dir, tmp_path):
    root = write(apps_dir / "tutorial", {"flaskr/__init__.py": FLASKR})
    s = make_server({"apps": [
        app_config("plain", root, type="python-wsgi", python=sys.executable, entry="flaskr:create_app()"),
        app_config("args", root, type="python-wsgi", python=sys.executable, path="/a",
                   entry="flaskr:create_app({'DEBUG': False}, greeting='hi')"),
        # no callable named: a module defining neither application nor app but create_app
        app_config("found", root, type="python-wsgi", python=sys.executable, path="/f", entry="flaskr"),
    ]})
    assert s.get("/")[2] == b"hello from flaskr (None)\n"
    assert s.get("/a/")[2] == b"hi from flaskr ({'DEBUG': False})\n"
    assert s.get("/f/")[2] == b"hello from flaskr (None)\n"
    out = s.cli("check").stdout
    assert "flaskr:create_app()" in out


def test_a_factory_named_without_the_call_is_refused_at_check(apps_dir, tmp_path):
    root = write(apps_dir / "tutorial", {"flaskr/__init__.py": FLASKR, "main.py": STARLETTE})
    r = check(tmp_path, [app_config("f", root, type="python-wsgi", entry="flaskr:create_app")])
    assert r.returncode == 2, r
    assert ("apps[0] (f).entry: flaskr:create_app is a function taking (test_config, greeting), not an app "
            "taking (environ, start_response)") in r.stderr
    assert 'call it: `entry: "flaskr:create_app()"`' in r.stderr and "Traceback" not in r.stderr
    r = check(tmp_path, [app_config("s", root, type="python-asgi", entry="main:create_app")])
    assert r.returncode == 2 and "not an app taking (scope, receive, send)" in r.stderr, r
    for bad, why in [("flaskr:create_app(", "is not a name or a call"),
                     ("flaskr:create_app(open('x'))", "the arguments must be literals"),
                     ("flaskr:create_app()()", "only a function name can be called")]:
        r = check(tmp_path, [app_config("f", root, type="python-wsgi", entry=bad)])
        assert r.returncode == 2 and why in r.stderr, (bad, r)


def test_a_factory_check_cannot_see_fails_the_boot_with_a_clear_error_and_stays_answering(make_server, apps_dir):
    # imported from elsewhere: check cannot see its signature; the loader does, at start
    root = write(apps_dir / "hidden", {"flaskr/__init__.py": "from .factory import create_app\n",
                                       "flaskr/factory.py": FLASKR})
    s = make_server({"environment": "development", "apps": [
        app_config("f", root, type="python-wsgi", python=sys.executable, entry="flaskr:create_app"),
        app_config("ok", root, type="python-wsgi", python=sys.executable, entry="flaskr:create_app()", path="/ok")]})
    status, _, body = s.get("/")
    assert status == 503
    page = body.decode()
    assert "flaskr:create_app is create_app taking (test_config=None, greeting=&#39;hello&#39;)" in page \
        or "flaskr:create_app is create_app taking (test_config=None, greeting='hello')" in page, page
    assert "not a WSGI app taking (environ, start_response)" in page
    assert "exit status 3" in page
    assert s.get("/")[0] == 503  # at once, again: not a 500 forever from a half-started worker
    assert s.get("/ok/")[2] == b"hello from flaskr (None)\n"
    st = s.app_status("f")
    assert st["state"] in ("backoff", "failed") and st["queue"] == 0


def test_starlette_app_factory(make_server, apps_dir):
    root = write(apps_dir / "s", {"main.py": STARLETTE})
    s = make_server({"apps": [app_config("s", root, type="python-asgi", python=sys.executable,
                                         entry="main:create_app(name='starlette')")]})
    assert s.get("/")[2] == b"hello from the starlette factory\n"


@pytest.mark.parametrize("version", ["3.8", "3.13"])
def test_factory_syntax_and_the_boot_check_on_other_pythons(make_server, apps_dir, version):
    found = sorted(Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"no python {version} under /root/.pyenv")
    py = str(found[-1])
    root = write(apps_dir / "plain", {"factory.py": PLAIN})
    s = make_server({"environment": "development", "apps": [
        app_config("p", root, type="python-wsgi", python=py, entry="factory:create_app('hi', punct='?')"),
        app_config("bad", root, type="python-wsgi", python=py, path="/bad",
                   entry="factory:make")]})
    assert s.get("/")[2] == f"hi? python {version}\n".encode()
    status, _, body = s.get("/bad/")
    assert status == 503 and b"not a WSGI app taking (environ, start_response)" in body


def test_a_standard_django_project_is_detected_and_served(make_server, apps_dir, tmp_path):
    pytest.importorskip("django")
    root = apps_dir / "site"
    root.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)], check=True,
                   capture_output=True, timeout=60)
    r = check(tmp_path, [app_config("dj", root, python=sys.executable)])
    assert r.returncode == 0, r
    assert "python-wsgi" in r.stdout and "mysite.wsgi:application" in r.stdout
    s = make_server({"apps": [app_config("dj", root, python=sys.executable)]})
    status, _, body = s.get("/", host="localhost")
    assert status == 200 and b"The install worked successfully" in body, body[:300]
    assert s.get("/admin/login/", host="localhost")[0] == 200
